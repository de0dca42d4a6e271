"""Loom's Canny against kornia's (what ComfyUI's Canny node runs), in one process, on 512 x 512 noise.

Run from the repository root: ``.venv/bin/python bench/canny.py`` (``--size``, ``--repeats``). Noise at a low
threshold makes long winding chains of weak edges: hysteresis that grew one pixel per round would need thousands
of rounds there, so the three threshold pairs cover the easy case, ComfyUI's defaults and that worst case. Both
run single-threaded (the bench machines are shared); each pair is timed in interleaved rounds after a warm-up and
the minimum is reported, with Loom's time over kornia's. Both must give the same edges, or the bench stops.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion.canny import canny

THRESHOLDS = ((0.4, 0.8), (0.05, 0.9), (0.01, 0.02))


def best_of(call: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from kornia.filters import canny as kornia_canny

    torch.set_num_threads(1)
    pixels = torch.rand((1, 3, args.size, args.size), generator=torch.Generator().manual_seed(0))
    print(f"Canny on {args.size}x{args.size} noise, one thread, best of {args.repeats}")
    for low, high in THRESHOLDS:
        ours = canny(pixels, low, high).edges
        theirs = kornia_canny(pixels, low, high)[1]
        if not torch.equal(ours, theirs):
            raise SystemExit(f"the edges differ at thresholds {low}/{high}")
        loom = best_of(functools.partial(canny, pixels, low, high), args.repeats)
        kornia = best_of(functools.partial(kornia_canny, pixels, low, high), args.repeats)
        print(
            f"  low {low:<5} high {high:<5} loom {loom * 1000:8.1f} ms  kornia {kornia * 1000:8.1f} ms  "
            f"ratio {loom / kornia:.2f}"
        )


if __name__ == "__main__":
    main()
