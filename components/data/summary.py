"""Stage summaries: every data stage writes `summary.json` in its own dir and returns the same dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"


def write_summary(stage_dir: Path | str, summary: dict[str, Any]) -> dict[str, Any]:
    """Write `summary` as `<stage_dir>/summary.json` (UTF-8, readable) and return it unchanged."""
    path = Path(stage_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, ensure_ascii=False, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary
