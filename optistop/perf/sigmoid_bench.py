"""What one sigmoid costs: optistop.logistic against scipy.special.expit, side by side in one process.

$ python -m optistop.perf.sigmoid_bench          # --number 200000

The served paths call the scalar ``sigmoid1`` once per score (policy.decide_one, the ONNX runtime's last
layer, a Platt or temperature calibrator) and the array ``sigmoid`` on small batches (the quality_predictor
model's calibrators); the offline fits call it on thousands. Printed: ns per scalar call on Python floats
and us per array call at N = 3 and 4096, best of 7 repeats, and how long ``import scipy.special`` takes in a
fresh interpreter (what every Triton backend process importing it would pay once).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import timeit
from collections.abc import Callable, Sequence

import numpy as np

from optistop.logistic import sigmoid, sigmoid1


def per_call(f: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(f, number=number, repeat=7)) / number


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=200_000, help="scalar calls per repeat (arrays: 1/50 of it)")
    args = ap.parse_args(argv)
    from scipy.special import expit

    zs = [-3.2, 0.7, 2.5, -0.1]
    for name, g in (("optistop.logistic.sigmoid1", sigmoid1), ("scipy.special.expit", expit)):
        t = per_call(lambda g=g: [g(z) for z in zs], args.number // 4) / 4
        print(f"scalar  {name:28s} {t * 1e9:8.0f} ns/call")
    for n in (3, 4096):
        a = np.random.default_rng(0).normal(0.0, 5.0, n)
        for name, h in (("optistop.logistic.sigmoid", sigmoid), ("scipy.special.expit", expit)):
            t = per_call(lambda h=h, a=a: h(a), max(args.number // 50, 1))
            print(f"array N={n:<5d} {name:26s} {t * 1e6:8.2f} us/call")
    code = "import time, numpy; t = time.perf_counter(); import scipy.special; print(time.perf_counter() - t)"
    cold = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
            for _ in range(3)]
    print(f"import scipy.special (fresh interpreter, numpy loaded): best of 3 {min(cold) * 1e3:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
