"""`make bench`: speed and memory figures, written to reports/bench.md and reports/bench.json.

Benchmarks, not tests: these machines are shared and noisy, so each suite reports ratios
measured within one run (e.g. ONNX Runtime vs torch on the same inputs), not absolute limits.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path

SUITES = ("benchmarks.preference", "benchmarks.generator")


def _markdown(report: dict) -> str:
    lines = ["# copyflow benchmarks", "", f"- machine: {report['machine']}", f"- date: {report['date']}", ""]
    for suite, results in report["suites"].items():
        lines += [f"## {suite}", ""]
        if isinstance(results, dict) and "error" in results:
            lines += [f"failed: `{results['error']}`", ""]
            continue
        lines += ["| measure | value |", "|---|---|"]
        for key, value in results.items():
            shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument("--only", choices=[s.rsplit(".", 1)[1] for s in SUITES])
    args = parser.parse_args(argv)
    from components.tracking import disable_telemetry

    disable_telemetry()
    import torch

    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "suites": {},
    }
    failed = False
    for suite in SUITES:
        name = suite.rsplit(".", 1)[1]
        if args.only and args.only != name:
            continue
        results: dict = {}
        started = time.perf_counter()
        try:
            importlib.import_module(suite).run(results)
        except Exception as exc:  # one broken suite must not hide the others' figures
            results = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        else:
            results["suite_seconds"] = round(time.perf_counter() - started, 1)
        report["suites"][name] = results
        print(f"{name}: {json.dumps(results, ensure_ascii=False)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (args.out / "bench.md").write_text(_markdown(report), encoding="utf-8")
    print(f"wrote {args.out / 'bench.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
