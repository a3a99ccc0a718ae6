"""The lung U-Net for corpora without lung masks: trained on the embedded synthetic cohort, cached.

Most real corpora ship no lung masks. Notebook 01 then segments them with a U-Net trained on the
``lungseg`` synthetic cohort of the run's profile (its masks are ground truth by construction),
trained once and cached under ``data_dir()/cache/unet/``, keyed by the profile's segmentation
fields, the seed and the generator version, and reused by every later run with the same key::

    net = synthetic_unet(profile, seed=0)
    net.model, net.size            # the U-Net and the input side it was trained at
    net.provenance                 # what it was trained on, held-out synthetic Dice,
                                   # real-sample Dice

With ``seg_ensemble`` above 1 the model is an ensemble of that many U-Nets
(:class:`cxrlib.models.unet.UNetEnsemble`), each trained and cached as above with a seed of its own
(:func:`member_seeds`) on the cohort drawn with that seed; their lung probabilities are averaged.

Its provenance says how far to trust it: the held-out synthetic Dice (patients it never saw) and,
when the folder of real radiographs with radiologist masks is present (``$CXR_REAL_SAMPLE``, else
``../shared/real_sample`` beside the repository), its Dice on those real images.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrlib.data.images import read_image, read_mask
from cxrlib.models.unet import UNet, UNetEnsemble
from cxrlib.paths import REPO_ROOT, data_dir
from cxrlib.profiles import Profile, get_profile

#: The profile fields that change the synthetic U-Net (its training cohort and its training).
#: (``seg_ensemble`` is not one: it says how many of them, each with its own key.)
UNET_FIELDS = ("seg_synthetic_images", "synth_size", "seg_size", "seg_synthetic_epochs",
               "seg_batch_size",
               "seg_lr", "seg_domain_randomisation", "seg_batch_norm", "seg_min_steps", "seg_loss",
               "width")
#: The synthetic cohort it is trained on (preset, shortcut knob).
#: ``lungseg`` (:mod:`cxrlib.data.synthetic.presets`) is ``arias``'s sources framed every way,
#: with young children and more, denser disease: what a segmenter meets in real corpora.
TRAINING_COHORT = ("lungseg", 1.0)


@dataclass(frozen=True)
class SyntheticUnet:
    """A U-Net trained on the synthetic cohort.

    Attributes
    ----------
    model : the U-Net (CPU, eval mode), or the ensemble of ``seg_ensemble`` U-Nets.
    size : its input side in pixels.
    weights_path : the cached weights file (its training parameters in the ``.json`` beside it);
        of the first member for an ensemble.
    provenance : training cohort, images, held-out synthetic Dice and IoU, real-sample Dice (or
        None when the folder is absent; ``real_sample_dir`` is the folder's name), the cache
        key(s), the member seeds and whether this call trained any member. For an ensemble,
        ``held_out_*`` and ``real_sample_*`` are the ensemble's own (``held_out_*`` on the first
        member's held-out patients, which no member trained on) and ``members_held_out_dice``
        each member's on its own.
    weights_paths : every member's weights file.
    real_sample : per image of the real sample, the scores without and with adaptation
        (:func:`score_on_real_adapted`), as recorded with the weights; None when the folder is
        absent.
    real_sample_adaptation : the ``params`` of that adaptation (None likewise).
    """

    model: UNet | UNetEnsemble
    size: int
    weights_path: Path
    provenance: dict
    weights_paths: tuple[Path, ...] = ()
    real_sample: pd.DataFrame | None = None
    real_sample_adaptation: dict | None = None


def real_sample_dir() -> Path | None:
    """The folder of real radiographs with lung masks (``images/``, ``masks/``), or None.

    ``$CXR_REAL_SAMPLE`` when set (an empty value switches it off), else ``../shared/real_sample``
    beside the repository when that exists.
    """
    env = os.environ.get("CXR_REAL_SAMPLE")
    folder = Path(env) if env else REPO_ROOT.parent / "shared" / "real_sample"
    if env == "" or not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        return None
    return folder


def real_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) of every ``folder/images/*.png`` with a mask of the same name in
    ``folder/masks``. Raises FileNotFoundError when there is no image or an image has no mask."""
    folder = Path(folder)
    images = sorted((folder / "images").glob("*.png"))
    if not images:
        raise FileNotFoundError(f"no PNG images in {folder / 'images'}")
    pairs = [(p.stem, p, folder / "masks" / p.name) for p in images]
    missing = [str(m) for _, _, m in pairs if not m.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) have no mask, e.g. {missing[0]}")
    return pairs


def score_on_real(model: UNet, size: int, folder: str | Path) -> pd.DataFrame:
    """Segment each real image of ``folder`` (:func:`real_pairs`) and score it against its
    radiologist mask, at the mask's resolution.

    Returns one row per image: ``image`` (stem), ``height``, ``width``, ``true_fraction``,
    ``pred_fraction`` (lung share of the image), ``qc_pass``, ``qc_reason``, ``dice``, ``iou``.
    """
    from cxrlib.preprocess.segmentation import dice_score, iou_score, lung_qc, segment_images

    rows = []
    for stem, image_path, mask_path in real_pairs(folder):
        image, truth = read_image(image_path), read_mask(mask_path)
        if image.shape != truth.shape:
            raise ValueError(f"{stem}: image {image.shape} and mask {truth.shape} differ in shape")
        pred = segment_images(model, [image], size)[0]
        qc = lung_qc(pred)
        rows.append({"image": stem, "height": image.shape[0], "width": image.shape[1],
                     "true_fraction": float(truth.mean()), "pred_fraction": float(pred.mean()),
                     "qc_pass": qc["qc_pass"], "qc_reason": qc["qc_reason"],
                     "dice": dice_score(pred, truth), "iou": iou_score(pred, truth)})
    return pd.DataFrame(rows)


def score_on_real_adapted(model: UNet | UNetEnsemble, size: int, folder: str | Path,
                          profile: str | Profile = "default", seed: int = 0
                          ) -> tuple[pd.DataFrame, dict]:
    """:func:`score_on_real` of ``model`` as given and once adapted to the folder's images
    (:func:`cxrlib.preprocess.segmentation_adaptation.adapt_unet` with the profile's settings and
    ``seed``; it is given the images only, never the masks).

    Returns the per-image table (the columns of :func:`score_on_real`, then ``pred_fraction``,
    ``qc_pass``, ``qc_reason``, ``dice`` and ``iou`` of the adapted model with the suffix
    ``_adapted``) and the adaptation's ``params``.
    """
    from cxrlib.gpu import DeviceSettings
    from cxrlib.preprocess.segmentation_adaptation import adapt_unet, adaptation_settings

    before = score_on_real(model, size, folder)
    adaptation = adapt_unet(model, [read_image(p) for _, p, _ in real_pairs(folder)], size,
                            **adaptation_settings(profile), seed=seed,
                            gpu=DeviceSettings.from_profile(profile))
    after = score_on_real(adaptation.model, size, folder)
    columns = ["image", "pred_fraction", "qc_pass", "qc_reason", "dice", "iou"]
    table = before.merge(after[columns], on="image", suffixes=("", "_adapted"),
                         validate="one_to_one")
    return table, adaptation.params


def cache_key(profile: str | Profile, seed: int = 0) -> str:
    """A short hash of what the synthetic U-Net depends on: the profile's :data:`UNET_FIELDS`,
    the seed, the training cohort and the generator version, and the profile's GPU settings that
    change a training (:meth:`cxrlib.gpu.DeviceSettings.hashed`: mixed precision, loader
    workers), when they are on."""
    from cxrlib.gpu import DeviceSettings
    from cxrlib.data.synthetic.cohort import GENERATOR_VERSION

    prof = get_profile(profile)
    what = {"fields": {f: getattr(prof, f) for f in UNET_FIELDS}, "seed": int(seed),
            "cohort": TRAINING_COHORT, "generator_version": GENERATOR_VERSION}
    gpu = {k: v for k, v in DeviceSettings.from_profile(prof).hashed().items()
           if k != "device_augmentation"}  # the classifiers' augmentation, not the U-Net's
    if gpu:  # only when on: the CPU profiles' keys stay as they were
        what["gpu"] = gpu
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def weights_path(profile: str | Profile, seed: int = 0) -> Path:
    """Where the synthetic U-Net of this profile and seed is cached."""
    prof = get_profile(profile)
    return (data_dir() / "cache" / "unet"
            / f"synthetic-{prof.name}-s{seed}-{cache_key(prof, seed)}.pt")


def _cohort(prof: Profile, seed: int, progress: bool) -> pd.DataFrame:
    """The manifest of the training cohort drawn with ``seed`` (generated if not cached)."""
    from cxrlib.data.manifest import load_manifest
    from cxrlib.data.synthetic import default_cohort

    preset, knob = TRAINING_COHORT
    return load_manifest(default_cohort(preset, prof, seed=seed, shortcut=knob,
                                        progress=progress))


def _held_out_scores(model: UNet | UNetEnsemble, manifest: pd.DataFrame, seed: int, size: int
                     ) -> pd.DataFrame:
    """Per-image Dice and IoU (:func:`cxrlib.preprocess.segmentation.score_masks`) of ``model``
    on the held-out test patients of ``manifest`` as the U-Net of ``seed`` split them (the rows
    with a lung mask, :func:`cxrlib.preprocess.segmentation.split_by_patient` with ``seed`` and
    :func:`~cxrlib.preprocess.segmentation.train_unet_on_manifest`'s fractions)."""
    from cxrlib.preprocess.segmentation import (
        rows_with_masks, score_masks, segment_manifest, split_by_patient,
    )

    rows = rows_with_masks(manifest)
    test = rows[split_by_patient(rows, seed=seed) == "test"]
    with tempfile.TemporaryDirectory() as tmp:
        segment_manifest(model, test, tmp, size=size, progress=False)
        return score_masks(test, tmp, progress=False)


def _held_out_summary(scores: pd.DataFrame) -> dict:
    return {"n_held_out": int(len(scores)), "held_out_dice": float(scores["dice"].mean()),
            "held_out_dice_sd": float(scores["dice"].std()),
            "held_out_iou": float(scores["iou"].mean())}


_HELD_OUT = ("n_held_out", "held_out_dice", "held_out_dice_sd", "held_out_iou")
_PROVENANCE = ("n_train", "n_valid", "epochs", "size", "width", "train_seconds",
               "domain_randomisation") + _HELD_OUT
_REAL = ("real_sample_dir", "real_sample_n", "real_sample_dice", "real_sample_dice_sd",
         "real_sample_qc_pass", "real_sample_dice_adapted", "real_sample_dice_adapted_sd")


def member_seeds(seed: int, n_members: int) -> list[int]:
    """The training seeds of the ``n_members`` U-Nets of study seed ``seed``:
    ``seed * n_members`` to ``seed * n_members + n_members - 1`` (the seed itself for one), so
    that the ensembles of two study seeds share no member."""
    if n_members < 1:
        raise ValueError(f"an ensemble has at least 1 member, got {n_members}")
    return [int(seed) * n_members + k for k in range(n_members)]


def _member(prof: Profile, seed: int, progress: bool, log) -> tuple[UNet, Path, bool]:
    """One U-Net of the ensemble: (model, weights file, trained by this call)."""
    from cxrlib.preprocess.segmentation import load_unet, read_unet_params, train_unet_on_manifest

    path = weights_path(prof, seed)
    if path.is_file() and "held_out_dice" in read_unet_params(path):
        return load_unet(path), path, False
    preset, knob = TRAINING_COHORT
    log(f"Training the lung U-Net on the synthetic '{preset}' cohort ({prof.name} profile, "
        f"seed {seed}); it is cached as `{path.name}` in the data folder's `cache/unet/` "
        "for later runs.")
    manifest = _cohort(prof, seed, progress)
    fit = train_unet_on_manifest(manifest, path, profile=prof, epochs=prof.seg_synthetic_epochs,
                                 min_steps=prof.seg_min_steps, seed=seed, progress=progress)
    scores = _held_out_scores(fit.model, manifest, seed, fit.params["size"])
    _update_params(path, {
        "trained_on": f"synthetic cohort '{preset}' (shortcut {knob:g}), "
                      f"{len(manifest)} images of {prof.synth_size} px",
        "cache_key": cache_key(prof, seed), **_held_out_summary(scores)})
    return fit.model, path, True


def _ensemble_scores_path(paths: list[Path], seed: int) -> Path:
    """Where an ensemble's real-sample scores are kept: named after its members' cache keys."""
    keys = hashlib.sha256(" ".join(p.stem for p in paths).encode()).hexdigest()[:12]
    return paths[0].with_name(f"ensemble-s{seed}-{len(paths)}x-{keys}.json")


def synthetic_unet(profile: str | Profile = "default", seed: int = 0, progress: bool = False,
                   log=print) -> SyntheticUnet:
    """The U-Net (or ensemble of ``seg_ensemble`` U-Nets) trained on the ``lungseg`` synthetic
    cohort of ``profile``, from the cache or trained now (each cohort is generated first if it is
    not cached either).

    Each member trains as notebook 01 trains on a synthetic cohort
    (:func:`cxrlib.preprocess.segmentation.train_unet_on_manifest`, patients split 70/10/20) for
    ``seg_synthetic_epochs`` epochs, with the seed of :func:`member_seeds` and the cohort drawn
    with it; its held-out 20% gives its synthetic Dice. An ensemble is scored as a whole on the
    first member's held-out 20%, which no member trained on. The real-sample Dice (without and
    with adaptation) is computed when the folder of :func:`real_sample_dir` is present and not
    yet scored for these weights. An ensemble's scores are kept in a JSON file of their own
    beside the members' weights.
    """
    from cxrlib.preprocess.segmentation import read_unet_params
    from cxrlib.preprocess.segmentation_adaptation import adaptation_settings

    prof = get_profile(profile)
    seeds = member_seeds(seed, prof.seg_ensemble)
    members = [_member(prof, s, progress, log) for s in seeds]
    paths = [path for _, path, _ in members]
    model = members[0][0] if len(members) == 1 else UNetEnsemble([m for m, _, _ in members])
    member_params = [read_unet_params(path) for path in paths]
    size = int(member_params[0]["size"])
    if len(paths) == 1:
        scores_path, recorded = paths[0].with_suffix(".json"), member_params[0]
    else:
        scores_path = _ensemble_scores_path(paths, seed)
        recorded = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
    changed = False
    if len(paths) > 1 and "held_out_dice" not in recorded:
        # the ensemble scored on the first member's held-out patients, which no member trained on
        # (each member trained on its own cohort draw): its own figure, not its members' mean
        scores = _held_out_scores(model, _cohort(prof, seeds[0], progress), seeds[0], size)
        recorded = {**recorded, "held_out_of_member": seeds[0], **_held_out_summary(scores)}
        changed = True
    sample = real_sample_dir()
    # the adapted score holds for the adaptation it was measured with: a new one is re-measured
    settings = json.loads(json.dumps(adaptation_settings(prof)))
    if sample is not None and (recorded.get("real_sample_dir") != str(sample)
                               or recorded.get("real_sample_adaptation") != settings
                               or "real_sample_images" not in recorded):
        table, adaptation = score_on_real_adapted(model, size, sample, prof, seed)
        recorded = {**recorded, "real_sample_dir": str(sample), "real_sample_n": int(len(table)),
                    "real_sample_adaptation": settings,
                    "real_sample_adaptation_params": adaptation,
                    "real_sample_images": table.to_dict("split", index=False),
                    "real_sample_dice": float(table["dice"].mean()),
                    "real_sample_dice_sd": float(table["dice"].std()),
                    "real_sample_qc_pass": int(table["qc_pass"].sum()),
                    "real_sample_dice_adapted": float(table["dice_adapted"].mean()),
                    "real_sample_dice_adapted_sd": float(table["dice_adapted"].std())}
        changed = True
    if changed:
        _write_json(scores_path, recorded)
    first = member_params[0]
    provenance = {k: first.get(k) for k in ("trained_on",) + _PROVENANCE}
    if len(members) > 1:
        provenance.update({k: recorded[k] for k in _HELD_OUT})
        provenance["members_held_out_dice"] = [float(p["held_out_dice"]) for p in member_params]
        provenance["train_seconds"] = float(sum(p["train_seconds"] for p in member_params))
    provenance["cache_key"] = ", ".join(str(p.get("cache_key")) for p in member_params)
    provenance["member_seeds"] = seeds
    provenance.update({k: (recorded.get(k) if sample is not None else None) for k in _REAL})
    if sample is not None:  # the folder's name: tables and reports hold no path of the machine
        provenance["real_sample_dir"] = sample.name
    provenance["trained_now"] = any(now for _, _, now in members)
    images = recorded.get("real_sample_images") if sample is not None else None
    real = None if images is None else pd.DataFrame(images["data"], columns=images["columns"])
    return SyntheticUnet(model=model, size=size, weights_path=paths[0], provenance=provenance,
                         weights_paths=tuple(paths), real_sample=real,
                         real_sample_adaptation=(recorded["real_sample_adaptation_params"]
                                                 if sample is not None else None))


def _write_json(target: Path, values: dict) -> None:
    """Write ``values`` to ``target`` atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(values, indent=2, sort_keys=True, default=str))
    os.replace(tmp, target)


def _update_params(weights: Path, extra: dict) -> dict:
    """Add ``extra`` to the parameters JSON beside ``weights`` (atomically); return them all."""
    from cxrlib.preprocess.segmentation import read_unet_params

    params = {**read_unet_params(weights), **extra}
    _write_json(weights.with_suffix(".json"), params)
    return params


def provenance_text(provenance: dict) -> str:
    """One paragraph, in Markdown, that says what the synthetic U-Net is and how well it does."""
    p = provenance
    seeds = p.get("member_seeds") or [None]
    each = " each" if len(seeds) > 1 else ""
    how = (f"{p['n_train']} training images{each}, {p['epochs']} epoch(s) at {p['size']} px; "
           f"{'trained in this run' if p['trained_now'] else 'read from the cache'}, "
           f"key{'s' if len(seeds) > 1 else ''} `{p['cache_key']}`")
    if len(seeds) == 1:
        text = ("No image of this corpus has a lung mask, so the lungs are segmented by a U-Net "
                f"trained on the embedded {p['trained_on']} ({how}). On the {p['n_held_out']} "
                f"images of held-out synthetic patients it reaches Dice {p['held_out_dice']:.3f} ± "
                f"{p['held_out_dice_sd']:.3f}. ")
    else:
        text = ("No image of this corpus has a lung mask, so the lungs are segmented by an "
                f"ensemble of {len(seeds)} U-Nets whose lung probabilities are averaged, each "
                f"trained with its own seed ({', '.join(map(str, seeds))}) on its own draw of the "
                f"embedded {p['trained_on']} ({how}). On the {p['n_held_out']} images of "
                "held-out patients of the first member's cohort, which no member trained on, "
                f"the ensemble reaches Dice {p['held_out_dice']:.3f} ± "
                f"{p['held_out_dice_sd']:.3f} (each member on its own held-out patients: "
                f"{', '.join(f'{d:.3f}' for d in p['members_held_out_dice'])}). ")
    if p.get("real_sample_dice") is not None:
        text += (f"On {p['real_sample_n']} real radiographs with radiologist masks "
                 f"(`{p['real_sample_dir']}`) it reaches Dice "
                 f"{p['real_sample_dice']:.3f} ± {p['real_sample_dice_sd']:.3f} "
                 f"({p['real_sample_qc_pass']} of {p['real_sample_n']} pass the QC), and "
                 f"{p['real_sample_dice_adapted']:.3f} ± {p['real_sample_dice_adapted_sd']:.3f} "
                 "once adapted to those images as it is adapted to a corpus below. ")
    else:
        text += ("No folder of real radiographs with masks was found (`$CXR_REAL_SAMPLE`), so its "
                 "accuracy on real images is not measured here. ")
    text += ("Synthetic training says how well the pipeline works on its own kind of image, not on "
             "this corpus: check the masks below, and pass `unet_weights` (a weights file from a "
             "run on a corpus with lung masks) when you have a better model.")
    return text


__all__ = ["SyntheticUnet", "synthetic_unet", "real_sample_dir", "real_pairs", "score_on_real",
           "score_on_real_adapted",
           "cache_key", "weights_path", "member_seeds", "provenance_text", "UNET_FIELDS",
           "TRAINING_COHORT"]
