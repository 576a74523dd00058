"""Which processes are still running in a folder: how tests see that a stopped stage left nothing behind."""

from __future__ import annotations

import os
from pathlib import Path


def processes_in(folder: Path) -> list[int]:
    """Live processes (other than this one) whose working directory is `folder` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if os.readlink(entry / "cwd") == str(folder):
                    found.append(int(entry.name))
            except OSError:  # gone, or a zombie (it has ended)
                continue
    return found
