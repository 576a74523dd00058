"""Processes that end with their parent.

A retrain is a chain of processes: the flow -> `dvc repro` -> the stage command -> the training
entry point (-> its DDP ranks). If the flow process is killed (SIGKILL, an OOM kill, a worker
crash), nothing tells the rest of the chain: DVC would keep its stage locks and the trainer
would keep running, and the next retrain would find the outputs busy. On Linux each link asks
the kernel for a SIGTERM when its parent dies (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op.

Each process asks for itself, after exec (a preexec_fn would run Python between fork and exec
in a multi-threaded flow process). Programs that are not ours run through this module:
`python -m components.lifecycle dvc repro ...`.

A link that is not Python breaks the chain: DVC runs each stage through `$SHELL -c`, and dash
(Debian's /bin/sh) forks the stage instead of exec-ing it, so the stage's parent is a shell
that nobody signals. So DVC runs as the leader of its own process group (components.dvc_runner),
and when it is told to end, this module ends the whole group: the shell, the stage, the trainer.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask for `sig` when the parent process exits."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent == 1 or os.getppid() != parent:  # the parent was already gone
        os.kill(os.getpid(), sig)


def end_group_on_sigterm() -> None:
    """When this process leads its process group, a SIGTERM ends every process in the group.

    Only a group leader does this: a process in its parent's group would end its parent too.
    """
    if not hasattr(os, "killpg") or os.getpgrp() != os.getpid():
        return

    def end_group(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.killpg(os.getpgrp(), signal.SIGTERM)  # this process included: it ends here

    signal.signal(signal.SIGTERM, end_group)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> str:
    """End the process group `proc` leads (started with start_new_session=True) and return what
    it printed (its piped output; "" when not piped).

    SIGTERM first: a Lightning trainer stops at its next step, a server shuts down. Once
    everything that shares the leader's output has ended (or after `grace_s`), SIGKILL whatever
    is left in the group.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        output = None
    _signal_group(proc.pid, signal.SIGKILL)
    if output is None:
        output, _ = proc.communicate()
    return output or ""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # every process in the group has ended
        pass


def main() -> None:
    """`python -m components.lifecycle MODULE ARGS...`: run `python -m MODULE ARGS...` so that it
    ends with its parent."""
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m components.lifecycle MODULE [ARGS...]")
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    end_group_on_sigterm()
    die_with_parent()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
