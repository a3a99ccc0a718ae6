"""DICOM -> cached 16-bit PNG throughput on generated 2048 x 2048 radiograph-sized DICOMs.

Writes N synthetic DICOMs (12 bits stored, half MONOCHROME1, half with a VOI window) in a
temporary folder, then times, on one core:

- decode: ``cxrlib.data.dicom.read_dicom`` (read + modality LUT + VOI + inversion);
- convert: ``cxrlib.data.dicom.dicom_to_cached_png`` on a cold cache (decode + hash + 16-bit PNG);
- cached: the same call again (hash + header only);
- with ``--jobs J > 1``, the cold conversion spread over J worker processes.

Usage::

    python benchmarks/dicom_throughput.py [--n 8] [--size 2048] [--jobs 2]
                                          [--syntax explicit|jpeg2000|rle]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrlib.data.dicom import dicom_to_cached_png, read_dicom, write_dicom

SYNTAXES = {"explicit": None, "jpeg2000": JPEG2000Lossless, "rle": RLELossless}


def make_dicoms(folder: Path, n: int, size: int, syntax: str, seed: int = 0) -> list[Path]:
    """``n`` smooth 12-bit images with noise, as DICOM files in ``folder``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    paths = []
    for k in range(n):
        body = 2000 + 1500 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.08)
        pixels = np.clip(body + rng.normal(0, 60, (size, size)), 0, 4095).astype(np.uint16)
        mono1 = k % 2 == 1
        paths.append(write_dicom(
            4095 - pixels if mono1 else pixels, folder / f"img{k:03d}.dcm",
            {"Modality": "DX", "ViewPosition": "PA", "PatientSex": "F", "PatientAge": "050Y"},
            photometric="MONOCHROME1" if mono1 else "MONOCHROME2",
            window=None if k % 4 < 2 else (2048, 4096), bits_stored=12,
            transfer_syntax=SYNTAXES[syntax]))
    return paths


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:7.2f} images/s  ({1000 * seconds / n:7.1f} ms/image)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="number of DICOMs")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--syntax", choices=sorted(SYNTAXES), default="explicit")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        paths = make_dicoms(tmp / "dicom", args.n, args.size, args.syntax)
        mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        print(f"{args.n} DICOMs of {args.size}x{args.size}, {args.syntax} "
              f"({mb:.1f} MB each), written in {time.perf_counter() - t0:.1f} s")

        t0 = time.perf_counter()
        for p in paths:
            read_dicom(p)
        print(f"decode only      (1 core): {_rate(args.n, time.perf_counter() - t0)}")

        t0 = time.perf_counter()
        pngs = [dicom_to_cached_png(p, tmp / "cache1")[0] for p in paths]
        print(f"DICOM -> PNG     (1 core): {_rate(args.n, time.perf_counter() - t0)}  "
              f"<- throughput per core")
        png_mb = sum(p.stat().st_size for p in pngs) / len(pngs) / 1e6
        print(f"  16-bit PNG size: {png_mb:.1f} MB per image")

        t0 = time.perf_counter()
        for p in paths:
            dicom_to_cached_png(p, tmp / "cache1")
        print(f"cache hit        (1 core): {_rate(args.n, time.perf_counter() - t0)}")

        if args.jobs > 1:
            from joblib import Parallel, delayed

            t0 = time.perf_counter()
            Parallel(n_jobs=args.jobs)(delayed(dicom_to_cached_png)(p, tmp / "cache2")
                                       for p in paths)
            seconds = time.perf_counter() - t0
            print(f"DICOM -> PNG ({args.jobs} jobs): {_rate(args.n, seconds)}  "
                  f"= {args.n / seconds / args.jobs:.2f} images/s per core")


if __name__ == "__main__":
    main()
