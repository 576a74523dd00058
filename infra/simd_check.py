"""Is this machine's vector arithmetic trustworthy? Divide random arrays by their own last element
for SECONDS and count results whose last element is not exactly 1.0.

    python infra/simd_check.py 300                                    # while other work runs
    NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4 AVX512_ICL AVX512_SPR" python infra/simd_check.py 300

Why this exists: on the shared 2-core VMs copyflow's CI runs on, numpy's AVX2 kernels
occasionally return wrong tail elements (bit flips: x / x == 2.0 or 4.0) while *other*
processes are busy; sklearn then fails with "x is neither increasing nor decreasing" or
"Percentiles must be in the range [0, 100]". Run this twice, side by side, during a test run:
the AVX2 process reports corrupted divisions, the one limited to numpy's SSE baseline does not.
The Makefile therefore limits numpy to its baseline by default (NPY_DISABLE_CPU_FEATURES).
Exit code 1 when any corrupted result was seen.
"""

from __future__ import annotations

import sys
import time

import numpy as np


def check(seconds: float, report_every: float = 10.0) -> int:
    rng = np.random.default_rng()
    start = last = time.monotonic()
    checks = bad = window_checks = window_bad = 0
    while time.monotonic() - start < seconds:
        a = rng.random(int(rng.integers(1, 4000))) + 0.5
        ratio = a / a[-1]
        wrong = ratio[-1] != 1.0
        checks, bad = checks + 1, bad + wrong
        window_checks, window_bad = window_checks + 1, window_bad + wrong
        if time.monotonic() - last >= report_every:
            print(f"t={time.monotonic() - start:5.0f}s  checks={window_checks}  corrupted={window_bad}", flush=True)
            last, window_checks, window_bad = time.monotonic(), 0, 0
    print(f"total: {checks} checks, {bad} corrupted")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(check(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0))
