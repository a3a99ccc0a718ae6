"""The data audit: the cohort described as the papers described theirs.

Functions take the validated manifest (and where needed the split plan or the data root) and
return plain DataFrames or matplotlib figures; notebook 00 displays and saves them. The
``*_vs_paper`` functions put our figures beside the published ones (``cxrlib.paper_tables``);
since our cohorts are smaller, they compare shares (percent), not counts.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cxrlib import paper_tables
from cxrlib.data.images import image_bit_depth, read_image, read_mask
from cxrlib.data.manifest import LABELS, SEVERITIES
from cxrlib.data.splits import split_groups


def sample_per_source(manifest: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows of each source, drawn at random (seeded), in the manifest's order."""
    keep = []
    for _, g in manifest.groupby("source", sort=True):
        keep.extend(g.sample(min(len(g), n), random_state=seed).index)
    return manifest.loc[sorted(keep)]


def _labels_in(manifest: pd.DataFrame) -> list[str]:
    present = set(manifest["label"])
    return [c for c in LABELS if c in present]


def cohort_by_class_source(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per source (rows) and class (columns), with patients, a ``total`` column and row.

    Returns a DataFrame with columns ``source``, one per class present, ``total``, ``patients``.
    """
    classes = _labels_in(manifest)
    counts = pd.crosstab(manifest["source"], manifest["label"]).reindex(columns=classes,
                                                                        fill_value=0)
    counts["total"] = counts.sum(axis=1)
    counts["patients"] = manifest.groupby("source")["patient_id"].nunique()
    total = counts.sum(axis=0)
    total["patients"] = manifest["patient_id"].nunique()
    counts.loc["total"] = total
    return counts.rename_axis("source").reset_index().rename_axis(columns=None)


class CorpusCannotSupport(ValueError):
    """The corpus cannot support the later notebooks (raised by notebook 00, where it shows)."""


def corpus_support(manifest: pd.DataFrame, folds: int) -> pd.DataFrame:
    """What the corpus can support: each class present against the folds of the profile.

    Patient groups are the split plan's unit (:func:`cxrlib.data.splits.split_groups`: patients,
    joined by duplicate images); a class needs at least ``folds`` of them for every test fold
    to hold one.

    Returns a DataFrame with columns ``class``, ``images``, ``patient_groups``, ``folds`` and
    ``enough`` (``patient_groups >= folds``), one row per class present, in the schema's order.
    """
    groups = split_groups(manifest)
    rows = [{"class": c, "images": int((manifest["label"] == c).sum()),
             "patient_groups": int(groups[manifest["label"] == c].nunique()), "folds": int(folds)}
            for c in _labels_in(manifest)]
    table = pd.DataFrame(rows, columns=["class", "images", "patient_groups", "folds"])
    table["enough"] = table["patient_groups"] >= table["folds"]
    return table


def require_support(support: pd.DataFrame, profile_name: str = "") -> str:
    """A sentence on what the corpus supports (:func:`corpus_support`), or the reasons why the
    later notebooks cannot run on it.

    Raises
    ------
    CorpusCannotSupport naming each problem: fewer than two classes (every later notebook
    compares classes), or a class with fewer patient groups than folds (a test fold without
    that class), with what to change.
    """
    folds = int(support["folds"].iloc[0]) if len(support) else 0
    profile = f" of profile {profile_name}" if profile_name else ""
    problems = []
    if len(support) < 2:
        problems.append(f"the corpus has {len(support)} class(es) "
                        f"({', '.join(support['class']) or 'no image'}); the classifiers and "
                        "every later notebook compare classes and need at least two: add a "
                        "source of another class to the corpus")
    short = support[~support["enough"]]
    for cls, n in zip(short["class"], short["patient_groups"]):
        fewer = f", or run with {n} folds (-p profile.folds={n})" if n >= 2 else ""
        problems.append(f"class {cls} has {n} patient group(s), fewer than the {folds} "
                        f"folds{profile}: a test fold would hold no {cls} image; add patients "
                        f"of that class{fewer}")
    if problems:
        raise CorpusCannotSupport("this corpus cannot support the study: "
                                  + "; ".join(problems) + ".")
    return (f"The corpus supports the study: {len(support)} classes, each with at least "
            f"{folds} patient groups for the {folds} folds{profile} "
            f"(fewest: {support['patient_groups'].min()}).")


def cohort_by_class_subset(
    manifest: pd.DataFrame, plan: pd.DataFrame, repetition: int = 0, fold: int = 0
) -> pd.DataFrame:
    """Images per class in the training and testing subsets of one fold (seed 001, Table II).

    Returns columns ``subset`` (training | testing) and one per class present.
    """
    rep = plan[(plan["repetition"] == repetition)].set_index("image_id")["fold"]
    subset = np.where(manifest["image_id"].map(rep).to_numpy() == fold, "testing", "training")
    table = pd.crosstab(pd.Series(subset, name="subset"), manifest["label"].to_numpy())
    table = table.reindex(index=["training", "testing"], columns=_labels_in(manifest), fill_value=0)
    return table.rename_axis(columns=None).reset_index()


def corpus_vs_paper(ours: pd.DataFrame) -> pd.DataFrame:
    """Seed 001 Table II beside ours, as counts and as percent of each subset.

    ``ours`` is the output of :func:`cohort_by_class_subset`.
    """
    paper = paper_tables.load("arias2020_table2_corpus")
    rows = []
    for _, p in paper.iterrows():
        o = ours[ours["subset"] == p["subset"]]
        p_total = sum(p[c] for c in LABELS)
        o_total = int(o[[c for c in LABELS if c in o]].to_numpy().sum()) if len(o) else 0
        for c in LABELS:
            o_n = int(o[c].iloc[0]) if (len(o) and c in o) else 0
            rows.append({
                "subset": p["subset"], "class": c,
                "paper_n": int(p[c]), "paper_pct": 100 * p[c] / p_total,
                "ours_n": o_n, "ours_pct": 100 * o_n / o_total if o_total else np.nan,
            })
    return pd.DataFrame(rows).round(1)


def demographics_by_source(manifest: pd.DataFrame) -> pd.DataFrame:
    """Per source: images, patients, age mean and sd (years), M/F, AP/PA/LAT, DX/CR counts and the
    classes present (seed 001, Table III). Unknown values are not counted (age sd ignores NaN)."""
    rows = []
    for source, g in manifest.groupby("source", sort=True):
        rows.append({
            "source": source,
            "images": len(g),
            "patients": g["patient_id"].nunique(),
            "age_mean": g["age"].mean(),
            "age_sd": g["age"].std(),
            "age_known": int(g["age"].notna().sum()),
            "males": int((g["sex"] == "M").sum()),
            "females": int((g["sex"] == "F").sum()),
            "ap": int((g["projection"] == "AP").sum()),
            "pa": int((g["projection"] == "PA").sum()),
            "lat": int((g["projection"] == "LAT").sum()),
            "dx": int((g["sensor"] == "DX").sum()),
            "cr": int((g["sensor"] == "CR").sum()),
            "classes": ", ".join(c for c in LABELS if (g["label"] == c).any()),
        })
    out = pd.DataFrame(rows)
    out[["age_mean", "age_sd"]] = out[["age_mean", "age_sd"]].round(1)
    return out


def _share(a, b) -> float:
    a, b = float(a), float(b)
    return 100 * a / (a + b) if (a + b) > 0 else np.nan


def demographics_vs_paper(ours: pd.DataFrame) -> pd.DataFrame:
    """Seed 001 Table III beside ours for the sources both have (matched by name), as shares.

    Columns: ``source``, then ``age_mean``, ``pct_male``, ``pct_ap``, ``pct_dx`` for ``paper_`` and
    ``ours_``. Empty when no source name matches (a real corpus with other names).
    """
    paper = paper_tables.load("arias2020_table3_sources").set_index("dataset")
    rows = []
    for _, o in ours.iterrows():
        if o["source"] not in paper.index:
            continue
        p = paper.loc[o["source"]]
        rows.append({
            "source": o["source"],
            "paper_images": p["images"], "ours_images": o["images"],
            "paper_age_mean": p["mean_age"], "ours_age_mean": o["age_mean"],
            "paper_pct_male": _share(p["males"], p["females"]),
            "ours_pct_male": _share(o["males"], o["females"]),
            "paper_pct_ap": _share(p["ap"], p["pa"]), "ours_pct_ap": _share(o["ap"], o["pa"]),
            "paper_pct_dx": _share(p["dx"], p["cr"]), "ours_pct_dx": _share(o["dx"], o["cr"]),
        })
    return pd.DataFrame(rows).round(1)


def covidgr_composition(manifest: pd.DataFrame) -> pd.DataFrame:
    """COVIDGR-style composition (seed 000, Table 3): per class images, women, men and, for the
    positives, the count per severity level. ``control`` is reported as ``negative`` and
    ``covid19`` as ``positive``."""
    names = {"control": "negative", "covid19": "positive"}
    rows = []
    for label, g in manifest.groupby("label", sort=True):
        row = {
            "class": names.get(label, label),
            "images": len(g),
            "women": int((g["sex"] == "F").sum()),
            "men": int((g["sex"] == "M").sum()),
        }
        for s in SEVERITIES:
            row[s] = int((g["severity"] == s).sum()) if label == "covid19" else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def composition_vs_paper(ours: pd.DataFrame) -> pd.DataFrame:
    """Seed 000 Table 3 beside ours, as counts and as percent of each class (severity levels as
    percent of the positives)."""
    paper = paper_tables.load("tabik2020_table3_covidgr").set_index("class")
    rows = []
    for cls in paper.index:
        o = ours.set_index("class").loc[cls] if cls in set(ours["class"]) else None
        for col in ["images", "women", "men", *SEVERITIES]:
            p_val = paper.at[cls, col]
            if pd.isna(p_val):
                continue
            denom_p = paper.at[cls, "images"] if col != "images" else paper["images"].sum()
            o_val = np.nan if o is None else o[col]
            denom_o = ((np.nan if o is None else o["images"]) if col != "images"
                       else ours["images"].sum())
            rows.append({
                "class": cls, "quantity": col,
                "paper_n": int(p_val), "paper_pct": 100 * p_val / denom_p,
                "ours_n": o_val, "ours_pct": 100 * o_val / denom_o if denom_o else np.nan,
            })
    return pd.DataFrame(rows).round(1)


def image_properties(
    manifest: pd.DataFrame,
    data_root: str | Path,
    max_per_source: int = 40,
    seed: int = 0,
) -> pd.DataFrame:
    """Size, bit depth and intensity statistics of a sample of images per source.

    Returns one row per sampled image: ``image_id``, ``source``, ``label``, ``height``, ``width``
    (pixels), ``bit_depth`` (8 | 16), ``mean``, ``sd``, ``p01``, ``p50``, ``p99`` (intensity in
    [0, 1]), and ``lung_fraction`` (share of the image inside the lung mask, NaN without a mask).
    """
    root = Path(data_root)
    sample = sample_per_source(manifest, max_per_source, seed)
    rows = []
    for _, r in sample.iterrows():
        path = root / r["path"]
        img = read_image(path)
        lung = np.nan
        if isinstance(r.get("lung_mask_path"), str):
            lung = float(read_mask(root / r["lung_mask_path"]).mean())
        q = np.quantile(img, [0.01, 0.5, 0.99])
        rows.append({
            "image_id": r["image_id"], "source": r["source"], "label": r["label"],
            "height": img.shape[0], "width": img.shape[1], "bit_depth": image_bit_depth(path),
            "mean": float(img.mean()), "sd": float(img.std()),
            "p01": q[0], "p50": q[1], "p99": q[2], "lung_fraction": lung,
        })
    return pd.DataFrame(rows)


def image_properties_by_source(props: pd.DataFrame) -> pd.DataFrame:
    """Summary of :func:`image_properties` per source: sizes (min-max), share of 16-bit files,
    mean intensity and lung fraction (mean ± sd)."""
    g = props.groupby("source")
    out = pd.DataFrame({
        "sampled": g.size(),
        "height": g["height"].agg(lambda s: f"{s.min()}-{s.max()}"),
        "width": g["width"].agg(lambda s: f"{s.min()}-{s.max()}"),
        "pct_16bit": 100 * g["bit_depth"].apply(lambda s: (s == 16).mean()),
        "mean_intensity": g["mean"].mean(),
        "p01": g["p01"].mean(),
        "p99": g["p99"].mean(),
        "lung_fraction_mean": g["lung_fraction"].mean(),
        "lung_fraction_sd": g["lung_fraction"].std(),
    })
    return out.round(3).reset_index()


def intensity_histograms(
    manifest: pd.DataFrame, data_root: str | Path, per_source: int = 8, bins: int = 64,
    seed: int = 0,
):
    """Figure: mean intensity histogram per source (density over [0, 1]) of a few images each."""
    import seaborn as sns

    root = Path(data_root)
    edges = np.linspace(0, 1, bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    rows = []
    for source, g in manifest.groupby("source", sort=True):
        for _, r in sample_per_source(g, per_source, seed).iterrows():
            h, _ = np.histogram(read_image(root / r["path"]), bins=edges, density=True)
            rows.append(pd.DataFrame({"source": source, "intensity": centres, "density": h}))
    data = pd.concat(rows, ignore_index=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(data=data, x="intensity", y="density", hue="source", errorbar=None, ax=ax)
    ax.set(xlabel="pixel intensity (0 = black, 1 = white)", ylabel="density",
           title="Intensity histograms per source (mean over sampled images)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def example_grid(
    manifest: pd.DataFrame,
    data_root: str | Path,
    seed: int = 0,
    max_sources: int = 8,
    mask_overlay: bool = True,
):
    """Figure: one example per class (rows) and source (columns), lung mask contour in green and
    lesion mask in red when present; empty cells where a source has no image of a class."""
    from skimage import measure

    root = Path(data_root)
    classes = _labels_in(manifest)
    sources = sorted(manifest["source"].unique())[:max_sources]
    fig, axes = plt.subplots(
        len(classes), len(sources), figsize=(2.0 * len(sources), 2.2 * len(classes)), squeeze=False
    )
    for i, c in enumerate(classes):
        for j, s in enumerate(sources):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            g = manifest[(manifest["label"] == c) & (manifest["source"] == s)]
            if i == 0:
                ax.set_title(s, fontsize=9)
            if j == 0:
                ax.set_ylabel(c, fontsize=10)
            if g.empty:
                ax.set_facecolor("#eeeeee")
                continue
            r = g.sample(1, random_state=seed).iloc[0]
            ax.imshow(read_image(root / r["path"]), cmap="gray", vmin=0, vmax=1)
            if mask_overlay:
                for col, colour in (("lung_mask_path", "lime"), ("lesion_mask_path", "red")):
                    if isinstance(r.get(col), str):
                        m = read_mask(root / r[col])
                        for contour in measure.find_contours(m.astype(float), 0.5):
                            ax.plot(contour[:, 1], contour[:, 0], color=colour, lw=0.7)
    fig.suptitle("Examples per class and source (green: lung mask, red: lesion mask)", fontsize=11)
    fig.tight_layout()
    return fig
