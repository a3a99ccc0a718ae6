"""Sim-to-real lung segmentation: the U-Net trained on synthetic radiographs, on real ones.

Three modes:

``--real DIR``: ``DIR`` holds real radiographs and lung masks with the same file stems::

    DIR/images/*.png     grayscale radiographs (8 or 16 bit, any size)
    DIR/masks/*.png      0/255 masks of both lungs

The default pipeline's U-Net (:func:`cxrlib.preprocess.synthetic_unet.synthetic_unet` of
``--profile``, trained on the synthetic cohort and cached; or ``--weights``) segments every image,
then the same U-Net adapted to DIR's images
(:func:`cxrlib.preprocess.segmentation_adaptation.adapt_unet` with the profile's settings:
batch-norm statistics, then self-training on plausible pseudo-masks; it reads the images only,
never DIR/masks). Printed: per-image Dice and IoU without and with adaptation (scored against the
masks at the mask's resolution), mean ± sd of each, and, as the last line, the mean Dice of the
default pipeline (synthetic training + adaptation). When DIR is the folder the synthetic U-Net was
scored on (:func:`cxrlib.preprocess.synthetic_unet.real_sample_dir`), the per-image table recorded
with it for the profile's adaptation settings is printed rather than adapted a second time
(:func:`cxrlib.preprocess.synthetic_unet.score_on_real_adapted` either way). The papers' U-Net
reaches 0.985 (JSRT) and 0.972 (Montgomery) when trained on real masks of the same sets.

``--real DIR --seeds 0,1,2``: the same for the segmenter of each study seed (each trained and
cached like the default one; with the profile's ``seg_ensemble`` above 1, an ensemble whose members
no other seed shares, :func:`cxrlib.preprocess.synthetic_unet.member_seeds`), then the mean ± sd
over them: a generator or training change should beat this spread, not one training's number.

``--real DIR --ablation``: the effect of each domain randomisation change
(:mod:`cxrlib.preprocess.domain_randomisation`) on the real-sample Dice (before adaptation): one
U-Net trained with the profile's changes (``seg_domain_randomisation``), one with none, one without
each of the profile's changes in turn and one with each other change added, all on the same
synthetic cohort (``--n-images`` images of ``--preset``, ``--epochs``), printed as a table with the
held-out synthetic Dice beside.

``--corpus MANIFEST``: an unlabelled real corpus (a manifest CSV,
:func:`cxrlib.data.manifest.load_manifest`); prints the segmentation QC's flag rate per source,
without and with adaptation to the corpus.

    python benchmarks/sim2real_segmentation.py --real ../shared/real_sample
    python benchmarks/sim2real_segmentation.py --real DIR --weights reports/.../unet_lung.pt
    python benchmarks/sim2real_segmentation.py --real DIR --seeds 0,1,2
    python benchmarks/sim2real_segmentation.py --real DIR --ablation --n-images 400 --epochs 3
    python benchmarks/sim2real_segmentation.py --corpus data_manifests/my_corpus.csv
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrlib.preprocess.domain_randomisation import CHANGES
from cxrlib.paths import data_dir
from cxrlib.profiles import get_profile
from cxrlib.preprocess.segmentation import (
    load_unet, read_unet_params, score_masks, segment_manifest, train_unet_on_manifest,
)
from cxrlib.preprocess.segmentation_adaptation import adapt_unet_to_manifest
from cxrlib.preprocess.synthetic_unet import (
    real_pairs, real_sample_dir, score_on_real, score_on_real_adapted, synthetic_unet,
)


def _model(args, seed: int | None = None):
    """(model, size, description, recorded) of ``--weights`` or of the profile's synthetic U-Net
    trained with ``seed`` (default ``--seed``); ``recorded`` is the synthetic U-Net's per-image
    real-sample table and adaptation params when they were measured on ``--real`` (else None)."""
    if args.weights:
        return (load_unet(args.weights), int(read_unet_params(args.weights)["size"]),
                str(args.weights), None)
    seed = args.seed if seed is None else seed
    net = synthetic_unet(args.profile, seed=seed, progress=not args.quiet)
    p = net.provenance
    names = ", ".join(path.name for path in net.weights_paths)
    what = (f"synthetic U-Net {names}" if len(net.weights_paths) == 1 else
            f"ensemble of {len(net.weights_paths)} synthetic U-Nets ({names})")
    sample = real_sample_dir()
    recorded = (None if net.real_sample is None or args.real is None
                or Path(args.real).resolve() != sample.resolve()
                else (net.real_sample, net.real_sample_adaptation))
    return (net.model, net.size, f"{what} (held-out synthetic Dice {p['held_out_dice']:.3f})",
            recorded)


def _mean_sd(values: pd.Series) -> str:
    return f"{values.mean():.3f} ± {values.std():.3f}"


def real_mode(args, seed: int | None = None) -> tuple[float, float]:
    """Per-image scores of one U-Net before and after adaptation; returns both mean Dice."""
    seed = args.seed if seed is None else seed
    pairs = real_pairs(args.real)  # fails early when the folder is incomplete
    model, size, what, recorded = _model(args, seed)
    prof = get_profile(args.profile)
    print(f"real images: {len(pairs)} from {args.real}; {what}, input {size} px")
    if recorded is None:
        table, p = score_on_real_adapted(model, size, args.real, prof, seed)
        when = "now"
    else:  # measured by synthetic_unet on this folder with these settings: not done again
        table, p = recorded
        when = "recorded with the U-Net"
    print(f"adaptation to these {p['n_used']} images ({prof.name} profile, {when}): batch-norm "
          f"statistics of {p['batch_norm_layers']} layers, then {p['rounds']} self-training "
          f"round(s) of {'/'.join(map(str, p['epochs_per_round'])) or 0} epoch(s) on "
          f"{'/'.join(map(str, p['n_targets_per_round'])) or 0} pseudo-masks of plausibility "
          f">= {p['min_plausibility']:g} ({p['seconds']:.0f} s)")
    shown = table[["image", "dice", "iou", "dice_adapted", "iou_adapted"]].rename(
        columns={"dice": "dice_synthetic", "iou": "iou_synthetic"})
    shown["image"] = shown["image"].str[:40]
    print(shown.to_string(index=False, float_format="%.3f"))
    print(f"synthetic U-Net: Dice {_mean_sd(table['dice'])}, IoU {_mean_sd(table['iou'])}")
    print(f"adapted:         Dice {_mean_sd(table['dice_adapted'])}, "
          f"IoU {_mean_sd(table['iou_adapted'])}")
    print(f"mean Dice of the default pipeline (synthetic training + adaptation): "
          f"{table['dice_adapted'].mean():.3f}")
    return float(table["dice"].mean()), float(table["dice_adapted"].mean())


def seeds_mode(args) -> None:
    """``--real`` over several trainings (``--seeds``): the spread a generator or training change
    has to beat."""
    rows = []
    for seed in args.seeds:
        print(f"--- seed {seed}", flush=True)
        before, after = real_mode(args, seed)
        rows.append({"seed": seed, "dice_synthetic": before, "dice_adapted": after})
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format="%.3f"))
    print(f"over {len(table)} trainings: synthetic U-Net {_mean_sd(table['dice_synthetic'])}, "
          f"adapted {_mean_sd(table['dice_adapted'])}")
    print(f"mean Dice of the default pipeline over {len(table)} trainings: "
          f"{table['dice_adapted'].mean():.3f}")


def ablation_mode(args) -> None:
    from cxrlib.data.manifest import load_manifest
    from cxrlib.data.synthetic import generate_cohort

    real_pairs(args.real)  # fails early when the folder is incomplete
    prof = get_profile(args.profile)
    work = args.work
    cohort_dir = work / f"cohort_{args.preset}_{args.n_images}_{prof.synth_size}_s{args.seed}"
    generate_cohort(cohort_dir, preset=args.preset, n_images=args.n_images, size=prof.synth_size,
                    seed=args.seed, progress=not args.quiet)
    manifest = load_manifest(cohort_dir / "manifest.csv")
    base = tuple(prof.seg_domain_randomisation)
    variants = [("profile's changes", base), ("none", ())]
    variants += [(f"without {name}", tuple(c for c in base if c != name)) for name in base]
    variants += [(f"with {name} added", base + (name,)) for name in CHANGES if name not in base]
    rows = []
    for label, changes in variants:
        t = time.perf_counter()
        key = hashlib.sha256(",".join(changes).encode()).hexdigest()[:10]
        weights = work / f"ablation_{args.preset}{args.n_images}_e{args.epochs}_{key}.pt"
        fit = train_unet_on_manifest(manifest, weights, profile=prof, epochs=args.epochs,
                                     domain_randomisation=changes, seed=args.seed, progress=False)
        test = manifest[manifest["image_id"].isin(
            fit.split.loc[fit.split["subset"] == "test", "image_id"])]
        masks_dir = work / "ablation_masks"
        segment_manifest(fit.model, test, masks_dir, size=fit.params["size"], progress=False)
        held = score_masks(test, masks_dir, progress=False)["dice"].mean()
        real = score_on_real(fit.model, fit.params["size"], args.real)["dice"]
        rows.append({"variant": label, "held_out_synthetic_dice": held,
                     "real_dice": real.mean(), "real_dice_sd": real.std(),
                     "seconds": time.perf_counter() - t})
        print(f"{label}: real Dice {real.mean():.3f}, held-out synthetic {held:.3f}", flush=True)
    table = pd.DataFrame(rows)
    without = table["variant"].str.startswith("without ")
    added = table["variant"].str.endswith(" added")
    table["effect_of_change"] = np.where(
        without, table.loc[0, "real_dice"] - table["real_dice"],
        np.where(added, table["real_dice"] - table.loc[0, "real_dice"], np.nan))
    print(table.to_string(index=False, float_format="%.3f"))
    print("effect_of_change: the real-sample Dice the change adds to the profile's set "
          "(positive: it helps); one training per row, so differences within a few hundredths "
          "may be training noise")


def corpus_mode(args) -> None:
    from cxrlib.data.manifest import data_root_of, load_manifest

    manifest = load_manifest(args.corpus)
    root = data_root_of(manifest)
    model, size, what, _ = _model(args)
    print(f"corpus: {len(manifest)} images from {args.corpus}; {what}")
    counts = []
    for label, net in (("synthetic U-Net", model), ("adapted", None)):
        if net is None:
            t = time.perf_counter()
            net = adapt_unet_to_manifest(model, size, manifest, root, args.profile,
                                         seed=args.seed, progress=not args.quiet).model
            print(f"adapted to the corpus in {time.perf_counter() - t:.0f} s")
        out = args.work / "corpus_masks" / label.replace(" ", "_")
        qc = segment_manifest(net, manifest, out, size=size, data_root=root,
                              min_lung_fraction=args.min_lung_fraction, progress=not args.quiet)
        qc["source"] = manifest["source"].to_numpy()
        counts.append(qc.groupby("source")["qc_pass"].agg(
            images="size", flagged=lambda s: int((~s).sum())).assign(model=label))
    table = pd.concat(counts).reset_index()
    table["flag_rate"] = table["flagged"] / table["images"]
    print(table.pivot(index="source", columns="model", values="flag_rate").to_string(
        float_format="%.3f"))
    overall = table.groupby("model")[["images", "flagged"]].sum()
    for label, row in overall.iterrows():
        print(f"{label}: {row['flagged']} of {row['images']} flagged "
              f"({row['flagged'] / row['images']:.1%})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--real", type=Path, help="folder with images/ and masks/")
    mode.add_argument("--corpus", type=Path, help="manifest CSV of an unlabelled real corpus")
    parser.add_argument("--ablation", action="store_true",
                        help="with --real: train one U-Net per domain randomisation variant")
    parser.add_argument("--weights", type=Path, help="a trained U-Net instead of the synthetic one")
    parser.add_argument("--profile", default="default", help="profile of the U-Net and adaptation")
    parser.add_argument("--work", type=Path, default=data_dir() / "sim2real",
                        help="where ablation cohorts, weights and corpus masks go")
    parser.add_argument("--preset", default="lungseg", help="ablation: synthetic cohort preset")
    parser.add_argument("--n-images", type=int, default=400, help="ablation: synthetic images")
    parser.add_argument("--epochs", type=int, default=3, help="ablation: U-Net epochs")
    parser.add_argument("--min-lung-fraction", type=float, default=0.30,
                        help="corpus: QC lung-fraction threshold (seed 003: 0.30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")],
                        help="with --real: one U-Net per seed (e.g. 0,1,2), mean ± sd over them")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ablation and not args.real:
        parser.error("--ablation needs --real DIR")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.corpus:
        corpus_mode(args)
    elif args.ablation:
        ablation_mode(args)
    elif args.seeds:
        seeds_mode(args)
    else:
        real_mode(args)


if __name__ == "__main__":
    main()
