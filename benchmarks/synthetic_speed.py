"""Speed of the synthetic cohort generator, in images per second per core.

    python benchmarks/synthetic_speed.py [--size 256] [--n 200] [--preset arias]

Measures, in one process:

- render: :func:`cxrlib.data.synthetic.render_case` on ``n`` sampled cases (no file written);
- full write: :func:`cxrlib.data.synthetic.generate_cohort` of ``n`` images into a temporary folder
  (sampling, rendering, three PNGs per image, manifest and its validation).

Both are reported per second of CPU time of this process (what one core delivers, robust to
other jobs sharing the machine) and per second of wall-clock time. The target is at least 50
images/s per core at 256 px.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrlib.data.synthetic import generate_cohort, render_case, sample_cases  # noqa: E402

TARGET = 50.0


def _clock(fn) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="long side of the images, px")
    ap.add_argument("--n", type=int, default=200, help="images per measurement")
    ap.add_argument("--preset", default="arias")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cases = [row for _, row in sample_cases(args.preset, args.n, args.seed, 1.0).iterrows()]
    render_case(cases[0], args.size, args.seed)  # warm caches (noise bank, fonts)
    cpu, wall = _clock(lambda: [render_case(c, args.size, args.seed) for c in cases])
    with tempfile.TemporaryDirectory() as tmp:
        cpu_w, wall_w = _clock(lambda: generate_cohort(
            tmp, preset=args.preset, n_images=args.n, size=args.size, seed=args.seed,
            progress=False))
    print(f"synthetic generator, preset {args.preset}, {args.n} images at {args.size} px, "
          "one process")
    print(f"{'stage':12s} {'img/s per core (CPU)':>22s} {'img/s wall':>12s} {'ms/img (CPU)':>14s}")
    for name, c, w in (("render", cpu, wall), ("full write", cpu_w, wall_w)):
        print(f"{name:12s} {args.n / c:22.1f} {args.n / w:12.1f} {1000 * c / args.n:14.1f}")
    verdict = "meets" if args.n / cpu_w >= TARGET else "MISSES"
    print(f"full write {verdict} the target of {TARGET:.0f} images/s per core")


if __name__ == "__main__":
    main()
