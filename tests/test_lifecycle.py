"""A child started through components.lifecycle ends when its parent is killed (SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("wrapped", [True, False])
def test_a_child_ends_with_its_killed_parent_only_when_asked(tmp_path, wrapped):
    (tmp_path / "sleeper.py").write_text("import time\ntime.sleep(120)\n")
    child = ["-m", "components.lifecycle", "sleeper"] if wrapped else ["-m", "sleeper"]
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time\n"
         f"child = subprocess.Popen([sys.executable, *{child!r}])\n"
         "print(child.pid, flush=True)\n"
         "time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    child_pid = int(parent.stdout.readline())
    time.sleep(1.0)  # the child has imported and asked for its signal
    assert _alive(child_pid)
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + (10 if wrapped else 2)  # a kept child: 2 s shows it stays
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert _alive(child_pid) is (not wrapped)
    finally:
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
