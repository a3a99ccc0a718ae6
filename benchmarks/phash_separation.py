"""Does the near-duplicate threshold of :mod:`cxrlib.data.qc` separate copies from distinct images?

On the 12 real radiographs of ``../shared/real_sample`` (read in place, never copied), each
image is perturbed in memory the way re-distributed copies differ (resized, JPEG re-encoded,
cropped by a few percent, contrast or gamma changed, and resize + JPEG together). The
perceptual hash of :func:`cxrlib.data.qc.perceptual_hash` (256 bits) is taken of every version and
the Hamming distances of two kinds of pairs are printed:

- near duplicates: an original and a perturbed copy of the same image;
- distinct images: two different images, originals or perturbed (pairs of images of one
  patient, e.g. two days of one ARDS course, are listed apart as "same patient").

The script ends, per perturbation, with the largest copy distance against the smallest
distinct one and whether ``cxrlib.data.qc.NEAR_MAX_DISTANCE`` catches the copies, and with the range
of thresholds that separates the copies the hash can see from every distinct pair. (A DCT
hash is not shift-invariant: crops of a few percent move it as far as another image does.)

Usage::

    python benchmarks/phash_separation.py [--sample ../shared/real_sample]
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrlib.data.images import read_image
from cxrlib.data.qc import NEAR_MAX_DISTANCE, perceptual_hash

DEFAULT_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "real_sample"


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


def _from_pil(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float32) / 255.0


def resize(image: np.ndarray, factor: float) -> np.ndarray:
    """Bilinear resize by ``factor`` (both sides)."""
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return _from_pil(_to_pil(image).resize(size, Image.Resampling.BILINEAR))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG re-encoding at ``quality`` (in memory)."""
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return _from_pil(Image.open(buffer).convert("L"))


def crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """Cut ``fraction`` of the height and width off each border."""
    h, w = image.shape
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    return image[dy:h - dy, dx:w - dx]


def contrast(image: np.ndarray, gain: float) -> np.ndarray:
    """Linear contrast about mid-grey, clipped to [0, 1]."""
    return np.clip((image - 0.5) * gain + 0.5, 0, 1)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Gamma curve ``image ** g``."""
    return np.clip(image, 0, 1) ** g


#: name -> function of the image: the copies a corpus may hold.
PERTURBATIONS = {
    "resize 0.5": lambda x: resize(x, 0.5),
    "resize 0.25": lambda x: resize(x, 0.25),
    "jpeg q75": lambda x: jpeg(x, 75),
    "jpeg q30": lambda x: jpeg(x, 30),
    "crop 1%": lambda x: crop(x, 0.01),
    "crop 2%": lambda x: crop(x, 0.02),
    "crop 5%": lambda x: crop(x, 0.05),
    "contrast x1.3": lambda x: contrast(x, 1.3),
    "gamma 0.7": lambda x: gamma(x, 0.7),
    "resize 0.5 + jpeg q50": lambda x: jpeg(resize(x, 0.5), 50),
}


def hash_versions(sample: Path) -> pd.DataFrame:
    """Perceptual hashes of every image of ``sample`` and of its perturbed copies.

    Returns
    -------
    DataFrame, one row per version: ``image`` (file name), ``patient``, ``version``
    ("original" or a key of ``PERTURBATIONS``), ``bits`` (bool array of 256 bits).
    """
    table = pd.read_csv(sample / "manifest.csv")
    rows = []
    for rec in table.itertuples():
        image = read_image(sample / rec.image)
        versions = {"original": image, **{k: f(image) for k, f in PERTURBATIONS.items()}}
        for name, version in versions.items():
            rows.append(dict(image=Path(rec.image).name, patient=str(rec.patientid),
                             version=name, bits=perceptual_hash(version)))
    return pd.DataFrame(rows)


def pair_distances(hashes: pd.DataFrame) -> pd.DataFrame:
    """Hamming distances (bits) of all pairs of versions that involve an original.

    Returns
    -------
    DataFrame with ``kind`` ("near duplicate", "distinct", "same patient"), ``version`` (the
    perturbation of the second member) and ``distance``.
    """
    originals = hashes[hashes["version"] == "original"]
    rows = []
    for a in originals.itertuples():
        for b in hashes.itertuples():
            if b.version == "original" and b.image <= a.image:
                continue  # each pair of originals once, never an image with itself
            if b.image == a.image:
                kind = "near duplicate"
            elif b.patient == a.patient:
                kind = "same patient"
            else:
                kind = "distinct"
            rows.append(dict(kind=kind, version=b.version,
                             distance=int(np.count_nonzero(a.bits != b.bits))))
    return pd.DataFrame(rows)


def summary(distances: pd.DataFrame) -> pd.DataFrame:
    """min / 5th percentile / median / 95th percentile / max distance per kind and version."""
    return (distances.groupby(["kind", "version"])["distance"]
            .describe(percentiles=[0.05, 0.5, 0.95])
            [["count", "min", "5%", "50%", "95%", "max"]].astype({"count": int}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=DEFAULT_SAMPLE,
                        help="folder with manifest.csv and images/ (default ../shared/real_sample)")
    args = parser.parse_args(argv)
    if not (args.sample / "manifest.csv").is_file():
        raise SystemExit(f"no manifest.csv in {args.sample}: pass --sample <real sample folder>")
    hashes = hash_versions(args.sample)
    distances = pair_distances(hashes)
    pd.set_option("display.width", 120)
    print(f"{hashes['image'].nunique()} images x {len(PERTURBATIONS)} perturbations, "
          f"{hashes['bits'].iat[0].size}-bit perceptual hash\n")
    print(summary(distances).to_string(float_format=lambda v: f"{v:.0f}"))
    near = distances[distances["kind"] == "near duplicate"]
    other = distances.loc[distances["kind"] != "near duplicate", "distance"]
    t = NEAR_MAX_DISTANCE
    worst = near.groupby("version")["distance"].max()
    seen = worst[worst < other.min()]
    print(f"\nclosest distinct pair: {other.min()} bits; threshold "
          f"cxrlib.data.qc.NEAR_MAX_DISTANCE = {t} bits")
    for version, d in worst.items():
        verdict = ("caught" if d <= t else
                   "missed at this threshold" if d < other.min() else
                   "not separable by this hash")
        print(f"  {version:<24} copies up to {d:3d} bits: {verdict}")
    print(f"copies the hash can tell apart ({', '.join(seen.index)}): any threshold in "
          f"[{seen.max()}, {other.min() - 1}] bits separates them from every distinct pair; "
          f"at {t}: {int((near['distance'] > t).sum())}/{len(near)} copies missed, "
          f"{int((other <= t).sum())}/{len(other)} distinct pairs merged")

if __name__ == "__main__":
    main()
