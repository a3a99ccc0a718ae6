"""Compare a synthetic cohort with a folder of real radiographs and lung masks.

    python benchmarks/synthetic_vs_real.py --real DIR [--synthetic MANIFEST_OR_PRESET]
                                           [--n 48] [--size 256] [--seed 0]

``DIR`` holds ``images/*.png`` and ``masks/*.png`` (0/255 lung masks with the same stems).
``--synthetic`` is a manifest CSV of a generated cohort, or a preset name (``arias``,
``covidgr``), in which case ``--n`` images of ``--size`` px are generated into a temporary folder.

Every image is read as grey levels in [0, 1] and resized to 256 px on its long side (masks with
nearest neighbour). Printed side by side (mean +- sd over images unless stated):

- grey-level quantiles of the whole image;
- mean row profile (top -> bottom) and column profile (left -> right), 8 bins each;
- lung fraction of the image, lung bounding box (centre, width, height as image fractions);
- mean grey level inside and outside the lungs, and their difference;
- gradient magnitude (Sobel, grey levels per pixel at 256 px): quantiles over all pixels, and
  the mean inside the lungs and along the lung border;
- the lungs' height / width, and where each lung's medial border lies at 50% and 75% of
  the lung height (:func:`_medial_edges`: the heart's size, and whether masks include
  the lung projected over the heart);
- the heart silhouette and the abdomen under the lungs, located from the lung mask
  (:func:`_heart_and_abdomen`): heart minus lung grey, the step across the left heart border, and
  the darkest grey under the lungs (gas) against the lungs, and the step across the domes.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cxrlib.data.images import read_image, read_mask  # noqa: E402

LONG_SIDE = 256
BINS = 8


def _resize(arr: np.ndarray, nearest: bool = False) -> np.ndarray:
    h, w = arr.shape
    scale = LONG_SIDE / max(h, w)
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    if nearest:
        return np.asarray(Image.fromarray(arr.astype(np.uint8) * 255)
                          .resize(size, Image.NEAREST)) > 127
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F")
                      .resize(size, Image.BILINEAR))


def image_statistics(image: np.ndarray, lung: np.ndarray) -> dict:
    """Statistics of one image (float [0, 1]) and its lung mask (bool), both at 256 px."""
    q = np.percentile(image, [1, 5, 25, 50, 75, 95, 99])
    rows = np.array_split(image.mean(axis=1), BINS)
    cols = np.array_split(image.mean(axis=0), BINS)
    rr, cc = np.nonzero(lung)
    h, w = image.shape
    grad = np.hypot(ndi.sobel(image, 0), ndi.sobel(image, 1)) / 8.0
    border = lung ^ ndi.binary_erosion(lung, iterations=2)
    stats = {f"grey q{p}": v for p, v in zip((1, 5, 25, 50, 75, 95, 99), q)}
    stats.update({f"row profile {i}": r.mean() for i, r in enumerate(rows)})
    stats.update({f"col profile {i}": c.mean() for i, c in enumerate(cols)})
    stats["lung fraction"] = lung.mean()
    if rr.size:
        stats["lung bbox centre x"] = (cc.min() + cc.max()) / 2 / w
        stats["lung bbox centre y"] = (rr.min() + rr.max()) / 2 / h
        stats["lung bbox width"] = (cc.max() - cc.min() + 1) / w
        stats["lung bbox height"] = (rr.max() - rr.min() + 1) / h
        stats["grey in lungs"] = image[lung].mean()
        stats["grey outside lungs"] = image[~lung].mean()
        stats["grey in - outside"] = stats["grey in lungs"] - stats["grey outside lungs"]
        stats["grad in lungs"] = grad[lung].mean()
        stats["grad on lung border"] = grad[border].mean()
        stats["lung bbox height / width"] = stats["lung bbox height"] * h / (
            stats["lung bbox width"] * w)
        stats.update(_medial_edges(lung, rr, cc))
        stats.update(_heart_and_abdomen(image, lung, rr, cc))
    for p in (50, 90, 99):
        stats[f"grad q{p}"] = np.percentile(grad, p)
    return stats


def _medial_edges(lung, rr, cc) -> dict:
    """Where each lung's medial border lies at 50% and 75% of the lung height (apex 0, base 1):
    its distance from the centre of the lungs' bounding box, as a fraction of the box's half
    width. The image-right (patient's left) lung at 75% says whether masks follow the heart
    border (about 0.4-0.6) or include the lung projected over the heart (about 0.1-0.2)."""
    out = {}
    top, bottom = rr.min(), rr.max()
    centre, half = (cc.min() + cc.max()) / 2, max((cc.max() - cc.min()) / 2, 1.0)
    for f in (0.5, 0.75):
        row = lung[int(round(top + f * (bottom - top)))]
        c = int(centre)
        left, right = np.flatnonzero(row[:c]), np.flatnonzero(row[c:]) + c
        if left.size:
            out[f"R lung medial edge {f:.0%}"] = (centre - left.max()) / half
        if right.size:
            out[f"L lung medial edge {f:.0%}"] = (right.min() - centre) / half
    return out


def _heart_and_abdomen(image, lung, rr, cc) -> dict:
    """The heart silhouette and the abdomen under the lungs, located from the lung mask alone:

    - ``heart - lungs (grey)``: mean grey between the two lungs in the lower half of the lung
      rows (the heart and mediastinum) minus the mean grey in the lungs;
    - ``heart border step (grey)``: mean grey 2-4 px medial minus 2-4 px lateral of the image-right
      lung's medial border in the same rows (how sharp the left heart border is);
    - ``below lungs q5 - lungs (grey)``: 5th grey percentile of the band under the lungs (a
      tenth of the lung height: bowel and stomach gas) minus the mean grey in the lungs;
    - ``dome step (grey)``: mean grey 2-5 px below minus 2-5 px above the lowest lung pixel of
      each column (columns where the lung spans at least 30% of the lung height and the image
      goes on below): how sharp the diaphragm's border is.
    """
    out = {}
    top, bottom = rr.min(), rr.max()
    mid_rows = np.arange((top + bottom) // 2, bottom + 1)
    centre = (cc.min() + cc.max()) // 2
    between, steps = [], []
    for r in mid_rows:
        left = np.flatnonzero(lung[r, :centre])
        right = np.flatnonzero(lung[r, centre:]) + centre
        if left.size and right.size and right.min() - left.max() > 8:
            between.append(image[r, left.max() + 1:right.min()].mean())
            b = right.min()
            if b + 5 <= image.shape[1]:
                steps.append(image[r, b - 4:b - 1].mean() - image[r, b + 2:b + 5].mean())
    lungs = image[lung].mean()
    if between:
        out["heart - lungs (grey)"] = float(np.mean(between)) - lungs
        if steps:
            out["heart border step (grey)"] = float(np.mean(steps))
    band = image[bottom + 1:min(image.shape[0], bottom + 1 + max((bottom - top) // 10, 2))]
    if band.size:
        out["below lungs q5 - lungs (grey)"] = float(np.percentile(band, 5)) - lungs
    domes = []
    for c in np.unique(cc):
        rows = np.flatnonzero(lung[:, c])
        if rows.size >= 0.3 * (bottom - top) and 5 <= rows.max() <= image.shape[0] - 6:
            b = rows.max()
            domes.append(image[b + 2:b + 6, c].mean() - image[b - 5:b - 1, c].mean())
    if domes:
        out["dome step (grey)"] = float(np.mean(domes))
    return out


def folder_pairs(real_dir: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for img in sorted((real_dir / "images").glob("*.png")):
        mask = real_dir / "masks" / img.name
        if mask.is_file():
            pairs.append((img, mask))
    if not pairs:
        raise SystemExit(f"no images/*.png with masks/*.png of the same stem under {real_dir}")
    return pairs


def manifest_pairs(manifest: Path) -> list[tuple[Path, Path]]:
    from cxrlib.data.manifest import load_manifest

    df = load_manifest(manifest)
    root = Path(df.attrs["data_root"])
    df = df[df["lung_mask_path"].notna()]
    return [(root / p, root / m) for p, m in zip(df["path"], df["lung_mask_path"])]


def collect(pairs) -> dict:
    table: dict[str, list] = {}
    for img_path, mask_path in pairs:
        image = _resize(read_image(img_path))
        lung = _resize(read_mask(mask_path), nearest=True)
        if lung.shape != image.shape:
            lung = np.asarray(Image.fromarray(lung.astype(np.uint8) * 255).resize(
                image.shape[::-1], Image.NEAREST)) > 127
        for k, v in image_statistics(image, lung).items():
            table.setdefault(k, []).append(float(v))
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real", required=True, type=Path, help="folder with images/ and masks/")
    ap.add_argument("--synthetic", default="arias", help="manifest CSV or preset name")
    ap.add_argument("--n", type=int, default=48, help="images to generate for a preset")
    ap.add_argument("--size", type=int, default=256, help="size of generated images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shortcut", type=float, default=1.0)
    args = ap.parse_args(argv)

    real = collect(folder_pairs(args.real))
    with tempfile.TemporaryDirectory() as tmp:
        if Path(args.synthetic).suffix == ".csv":
            synth_pairs = manifest_pairs(Path(args.synthetic))
            label = Path(args.synthetic).name
        else:
            from cxrlib.data.synthetic import generate_cohort

            generate_cohort(tmp, preset=args.synthetic, n_images=args.n, size=args.size,
                            seed=args.seed, shortcut=args.shortcut, progress=False)
            synth_pairs = manifest_pairs(Path(tmp) / "manifest.csv")
            label = f"{args.synthetic} n={args.n} {args.size}px"
        synth = collect(synth_pairs)
    print(f"real: {args.real} ({len(real['lung fraction'])} images)   synthetic: {label} "
          f"({len(synth['lung fraction'])} images)")
    print(f"{'statistic':24s} {'real mean ± sd':>18s} {'synthetic mean ± sd':>22s}")
    for key in dict.fromkeys([*real, *synth]):
        r, s = np.array(real.get(key, [np.nan])), np.array(synth.get(key, [np.nan]))
        print(f"{key:24s} {r.mean():9.3f} ± {r.std():6.3f} {s.mean():13.3f} ± {s.std():6.3f}")


if __name__ == "__main__":
    main()
