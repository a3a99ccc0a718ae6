"""Sim-to-real lung segmentation: a U-Net trained on synthetic radiographs, scored on real ones.

``DIR`` holds real radiographs and lung masks with the same file stems::

    DIR/images/*.png     grayscale radiographs (8 or 16 bit, any size)
    DIR/masks/*.png      0/255 masks of both lungs

Without ``--weights`` a synthetic cohort is generated (``cxrlib.synthetic.generate_cohort``) and a
U-Net is trained on it first (weights saved under ``--work``); its Dice on the synthetic test
patients is printed too. Then every real image is segmented at the size the network was trained
at, post-processed, and scored against its mask at the mask's resolution. The last line is the
mean Dice on the real images. The papers' U-Net reaches 0.985 (JSRT) and 0.972 (Montgomery) when
trained on real masks of the same sets.

    python benchmarks/sim2real_segmentation.py --real /path/to/real_sample
    python benchmarks/sim2real_segmentation.py --real DIR --weights reports/.../unet_lung.pt
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from cxrlib.paths import data_dir
from cxrlib.profiles import get_profile
from cxrlib.segmentation import (
    load_unet, read_unet_params, score_masks, segment_manifest, summarise_scores,
    train_unet_on_manifest,
)
from cxrlib.synthetic_unet import real_pairs, score_on_real


def train_on_synthetic(args) -> Path:
    """Generate a synthetic cohort, train a U-Net on it, report its synthetic test Dice."""
    from cxrlib.synthetic import generate_cohort

    work = args.work
    cohort_dir = work / f"cohort_{args.preset}_{args.n_images}_{args.synth_size}_s{args.seed}"
    t = time.perf_counter()
    manifest = generate_cohort(cohort_dir, preset=args.preset, n_images=args.n_images,
                               size=args.synth_size, seed=args.seed, progress=not args.quiet)
    print(f"synthetic cohort: {len(manifest)} images of ~{args.synth_size} px "
          f"({time.perf_counter() - t:.0f} s) in {cohort_dir}")
    weights = work / (f"unet_{args.preset}{args.n_images}_{args.seg_size}px_w{args.width}"
                      f"_e{args.epochs}_s{args.seed}.pt")
    fit = train_unet_on_manifest(
        manifest, weights, profile=args.profile, size=args.seg_size, width=args.width,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        progress=not args.quiet,
    )
    print(fit.history.to_string(index=False))
    print(f"trained in {fit.params['train_seconds']:.0f} s on {fit.params['n_train']} images; "
          f"weights: {weights}")
    test = manifest[manifest["image_id"].isin(
        fit.split.loc[fit.split["subset"] == "test", "image_id"])]
    masks_dir = work / "synthetic_test_masks"
    segment_manifest(fit.model, test, masks_dir, size=args.seg_size, progress=False)
    scores = score_masks(test, masks_dir, progress=False)
    print("synthetic test patients:")
    print(summarise_scores(scores, by="source").to_string(index=False, float_format="%.3f"))
    return weights


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="folder with images/ and masks/")
    parser.add_argument("--weights", type=Path, help="a trained U-Net; else train one")
    parser.add_argument("--work", type=Path, default=data_dir() / "sim2real",
                        help="where the synthetic cohort and the weights go")
    parser.add_argument("--preset", default="arias", help="synthetic cohort preset")
    parser.add_argument("--n-images", type=int, default=400, help="synthetic images")
    parser.add_argument("--synth-size", type=int, default=256, help="synthetic image size")
    parser.add_argument("--profile", default="default",
                        help="profile giving the training settings not set below")
    parser.add_argument("--seg-size", type=int, help="U-Net input size (profile seg_size)")
    parser.add_argument("--width", type=float, help="U-Net width (profile width)")
    parser.add_argument("--epochs", type=int, help="epochs (profile seg_epochs)")
    parser.add_argument("--batch-size", type=int, help="batch size (profile seg_batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (profile seg_lr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    prof = get_profile(args.profile)
    args.seg_size = args.seg_size or prof.seg_size
    args.width = args.width or prof.width
    args.epochs = args.epochs or prof.seg_epochs
    args.batch_size = args.batch_size or prof.seg_batch_size
    args.lr = args.lr or prof.seg_lr
    if args.threads:
        torch.set_num_threads(args.threads)

    real_pairs(args.real)  # fails early when the folder is incomplete
    weights = args.weights if args.weights else train_on_synthetic(args)
    model = load_unet(weights)
    size = int(read_unet_params(weights).get("size", args.seg_size))

    table = score_on_real(model, size, args.real)
    table["image"] = table["image"].str[:40]
    print(f"\nreal images: {len(table)} from {args.real}; U-Net {weights} at {size} px")
    print(table.to_string(index=False, float_format="%.3f"))
    print(f"median Dice: {table['dice'].median():.3f}; mean IoU: {table['iou'].mean():.3f} "
          f"(sd {table['iou'].std():.3f}); QC pass: {int(table['qc_pass'].sum())}/{len(table)}")
    print(f"mean Dice: {table['dice'].mean():.3f} (sd {table['dice'].std():.3f})")


if __name__ == "__main__":
    main()
