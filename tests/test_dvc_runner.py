"""components.dvc_runner against a real DVC project whose stage runs under a shell that waits
for it (`cmd && echo`), as dash (Debian's /bin/sh) does for every stage command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.dvc_runner import StageTimedOut, repro
from tests.processes import processes_in

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")

SLEEPER = "import os, time\nopen('stage.pid', 'w').write(str(os.getpid()))\ntime.sleep(300)\n"


@pytest.fixture()
def sleeper_project(tmp_path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "sleeper.py").write_text(SLEEPER)
    (project / "dvc.yaml").write_text(
        "stages:\n  sleeper:\n    foreach: [quick]\n    do:\n      cmd: python sleeper.py && echo finished\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True,
                   env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    return project


def _wait_until_gone(folder: Path, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes_in(folder)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _end(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_timed_out_stage_ends_with_dvc_and_the_shell_between_them(sleeper_project):
    with pytest.raises(StageTimedOut, match="stopped after 20 s"):
        repro("sleeper", "quick", cwd=sleeper_project, timeout_s=20)
    assert (sleeper_project / "stage.pid").exists(), "the stage never started: the test proves nothing"
    left = processes_in(sleeper_project)
    _end(left)
    assert left == []  # DVC, the shell and the stage


def test_killing_the_process_that_runs_dvc_ends_the_stage_too(sleeper_project):
    runner = subprocess.Popen(
        [sys.executable, "-c", f"from components.dvc_runner import repro\nrepro('sleeper', 'quick', cwd={str(sleeper_project)!r})\n"],
        env={**os.environ, "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    pid_file = sleeper_project / "stage.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pid_file.exists(), "the stage never started"
    time.sleep(0.5)  # the stage has asked for its end-with-parent signal
    runner.kill()  # as an OOM kill or a crashed worker would
    runner.wait(timeout=10)
    left = _wait_until_gone(sleeper_project, 15)
    _end(left)
    assert left == []
