"""Is the CAM mass outside the lungs higher in one experiment than in another, and is that gap
larger in a cohort with the shortcut planted than in its shortcut-free twin? (seed 001's claim)"""
from __future__ import annotations

import pandas as pd

__all__ = ["compare_outside_energy", "compare_cohorts", "SCORING_SETTINGS", "twin_mismatch",
           "claim_answer", "shortcut_comparison"]


def _paired_outside(scores: pd.DataFrame, a: str, b: str,
                    beyond_chance: bool = False) -> pd.DataFrame:
    """Per image (index), the CAM mass outside the lungs in experiments ``a`` and ``b`` (columns),
    images without a map in either dropped."""
    keys = [c for c in ("model", "method") if c in scores.columns]
    models = scores[scores["experiment"].isin([a, b])].groupby("experiment")[keys].nunique()
    if keys and (models > 1).any(axis=None):
        raise ValueError(f"more than one model or method per experiment in the scores of {a!r} and "
                         f"{b!r}: select one (experiment, model, method) each before comparing")
    outside = 1 - scores["lung_energy"]
    if beyond_chance:
        outside = outside - (1 - scores["lung_area"])
    outside = scores.assign(outside=outside).pivot_table(
        index="image_id", columns="experiment", values="outside", aggfunc="mean")
    for name in (a, b):
        if name not in outside.columns:
            raise ValueError(f"experiment {name!r} is not in the scores "
                             f"(have {list(outside.columns)})")
    return outside[[a, b]].dropna()


def compare_outside_energy(scores: pd.DataFrame, a: str, b: str,
                           beyond_chance: bool = False) -> dict:
    """Is the CAM mass outside the lungs higher in experiment ``a`` than in ``b``?

    Pairs the images scored in both experiments (same image, its own out-of-fold model in each)
    and tests the paired differences ``outside_a - outside_b`` with the one-sided Wilcoxon
    signed-rank test (``scipy.stats.wilcoxon``, alternative ``greater``); images whose map is zero
    in either experiment are dropped.

    With ``beyond_chance=True`` the outside mass is taken beyond what a uniform map would put
    there (``(1 - lung_energy) - (1 - lung_area)``), so that a view that simply shows more
    background (``exp1``) is not counted as looking at it more.

    Returns
    -------
    dict with ``n_pairs``, ``outside_a`` / ``outside_b`` (means), ``mean_difference``,
    ``share_a_higher`` (fraction of pairs with a > b), ``statistic`` and ``p_value``.
    """
    from scipy.stats import wilcoxon

    pairs = _paired_outside(scores, a, b, beyond_chance)
    if len(pairs) < 2:
        raise ValueError(f"only {len(pairs)} image(s) scored in both {a} and {b}: need at least 2")
    diff = pairs[a] - pairs[b]
    test = wilcoxon(diff, alternative="greater") if (diff != 0).any() else None
    return {"n_pairs": int(len(pairs)), "outside_a": float(pairs[a].mean()),
            "outside_b": float(pairs[b].mean()), "mean_difference": float(diff.mean()),
            "share_a_higher": float((diff > 0).mean()),
            "statistic": float(test.statistic) if test is not None else float("nan"),
            "p_value": float(test.pvalue) if test is not None else 1.0}


def compare_cohorts(scores_x: pd.DataFrame, scores_y: pd.DataFrame, a: str = "exp1",
                    b: str = "exp3", beyond_chance: bool = False) -> dict:
    """Is the gap ``outside_a - outside_b`` (CAM mass outside the lungs, per image) larger in
    cohort x (e.g. shortcut planted) than in cohort y (e.g. its shortcut-free twin)?

    The per-image paired differences of each cohort (:func:`score_cams` tables) are compared with
    the one-sided Mann-Whitney U test (``scipy.stats.mannwhitneyu``, alternative ``greater``):
    the images of two cohorts are different images, so the test is unpaired. ``beyond_chance``
    as in :func:`compare_outside_energy`.

    Returns
    -------
    dict with ``n_x``, ``n_y``, ``gap_x``, ``gap_y`` (mean differences), ``statistic`` and
    ``p_value``.
    """
    from scipy.stats import mannwhitneyu

    dx, dy = (pairs[a] - pairs[b] for pairs in (_paired_outside(scores_x, a, b, beyond_chance),
                                                 _paired_outside(scores_y, a, b, beyond_chance)))
    if len(dx) < 2 or len(dy) < 2:
        raise ValueError(f"need at least 2 images scored in both {a} and {b} in each cohort, "
                         f"got {len(dx)} and {len(dy)}")
    test = mannwhitneyu(dx, dy, alternative="greater")
    return {"n_x": int(len(dx)), "n_y": int(len(dy)), "gap_x": float(dx.mean()),
            "gap_y": float(dy.mean()), "statistic": float(test.statistic),
            "p_value": float(test.pvalue)}


#: Columns of notebook 06's ``cam_scores.csv`` that must agree before two cohorts' maps are
#: compared: how the maps were made and scored. (That the two runs share profile, seed and preset
#: and that the knobs differ is checked on the runs' stamps,
#: :func:`cxrlib.study.shortcut_twin_run`.)
SCORING_SETTINGS = ("cam_target", "lung_dilation")


def twin_mismatch(planted: pd.DataFrame, clean: pd.DataFrame, a: str = "exp1",
                  b: str = "exp3") -> str | None:
    """Why two cohorts' :func:`score_cams` tables (with the :data:`SCORING_SETTINGS` columns that
    notebook 06 adds) cannot be compared by :func:`shortcut_comparison`, or None when they can:
    every setting must be the same in both, and both must have scored experiments ``a`` and ``b``.
    """
    def single(scores, column):
        values = scores[column].dropna().unique() if column in scores.columns else []
        return values[0] if len(values) == 1 else None

    for column in SCORING_SETTINGS:
        here, there = single(planted, column), single(clean, column)
        if here is None or there is None or str(here) != str(there):
            return f"`{column}` differs or is missing ({here} vs {there})"
    for name, scores in (("planted", planted), ("clean", clean)):
        missing = {a, b} - set(scores["experiment"])
        if missing:
            return f"the {name} cohort has no scores of {sorted(missing)}"
    return None


def claim_answer(p_value: float, difference: float, alpha: float = 0.05) -> str:
    """``"yes"`` when a one-sided test of ``difference > 0`` rejects at ``alpha`` and the
    observed difference is positive, else ``"no"``: how notebook 06 answers seed 001's claim."""
    return "yes" if p_value < alpha and difference > 0 else "no"


def shortcut_comparison(planted: pd.DataFrame, clean: pd.DataFrame, a: str = "exp1",
                        b: str = "exp3") -> pd.DataFrame:
    """Seed 001's claim on a cohort with the shortcut planted and on its shortcut-free twin.

    Parameters
    ----------
    planted, clean : :func:`score_cams` tables of the two cohorts (one model per experiment).
    a, b : the experiments compared (``a`` expected to look outside the lungs more).

    Returns
    -------
    DataFrame, one row per measure (``outside_energy``, and ``outside_energy_beyond_chance``:
    beyond what a uniform map would put outside) with, for ``<c>`` in ``planted`` and ``clean``:
    ``n_<c>`` (paired images), ``outside_<a>_<c>``, ``outside_<b>_<c>`` (means), ``gap_<c>``
    (mean of ``a - b``) and ``p_<c>`` (one-sided Wilcoxon, :func:`compare_outside_energy`); then
    ``gap_difference`` (``gap_planted - gap_clean``) and ``p_gap`` (one-sided Mann-Whitney U that
    the planted cohort's per-image gaps are larger, :func:`compare_cohorts`).
    """
    rows = []
    for measure, beyond in (("outside_energy", False), ("outside_energy_beyond_chance", True)):
        row: dict = {"measure": measure}
        for name, scores in (("planted", planted), ("clean", clean)):
            within = compare_outside_energy(scores, a, b, beyond_chance=beyond)
            row.update({f"n_{name}": within["n_pairs"], f"outside_{a}_{name}": within["outside_a"],
                        f"outside_{b}_{name}": within["outside_b"],
                        f"gap_{name}": within["mean_difference"], f"p_{name}": within["p_value"]})
        between = compare_cohorts(planted, clean, a, b, beyond_chance=beyond)
        row.update({"gap_difference": between["gap_x"] - between["gap_y"],
                    "p_gap": between["p_value"]})
        rows.append(row)
    return pd.DataFrame(rows)
