"""The flow of images through the study: images in, left out at each step with the reason,
images analysed per notebook (the "flow of participants" a reviewer asks for, CLAIM item 33).

Each notebook records, for every image of the manifest, whether it analysed it, and if not why::

    reasons = funnel(df["image_id"], [
        (qc_reasons, set(views["image_id"])),            # per-image reason, ids kept after it
        ("no out-of-fold prediction", set(preds["image_id"])),
    ])
    record_flow(run, "03_classifier_cv", reasons)

``record_flow`` writes ``artifacts/flow/<notebook>.csv`` (one row per image: ``image_id``,
``notebook``, ``outcome`` = analysed | left out | flagged, ``reason``) and rebuilds
``tables/flow.csv`` from every notebook's record so far (:func:`flow_table`). What was left out
before the study (the import and corpus QC report beside a real manifest) is recorded by notebook
00 with :func:`record_intake`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from cxrlib.data.qc import short_reason
from cxrlib.run_folder import RunFolder

FLOW_DIR = "flow"
COLUMNS = ("image_id", "notebook", "outcome", "reason")
OUTCOMES = ("analysed", "flagged", "left out")
INTAKE = "before the study (import and corpus QC report)"


def funnel(image_ids: Iterable[str],
           steps: Sequence[tuple[str | Mapping[str, str], Iterable[str]]]) -> pd.Series:
    """Why each image did not reach the end of a sequence of steps.

    Parameters
    ----------
    image_ids : every image of the manifest.
    steps : ``(reason, kept)`` pairs in order: the images not in ``kept`` that were still in
        after the earlier steps are left out with ``reason`` (a text, or image_id -> text, with a
        fallback of ``"left out"`` for ids the mapping lacks).

    Returns
    -------
    Series indexed by image_id (in the given order): ``""`` for the images that passed every
    step, else the reason of the first step that left it out.
    """
    ids = pd.Index([str(i) for i in image_ids])
    reasons = pd.Series("", index=ids, dtype=object)
    remaining = pd.Series(True, index=ids)
    for reason, kept in steps:
        kept = set(map(str, kept))
        out = remaining & ~ids.isin(list(kept))
        for image_id in ids[out.to_numpy()]:
            reasons[image_id] = (reason.get(image_id, "left out") if isinstance(reason, Mapping)
                                 else reason)
        remaining &= ~out
    return reasons


def record_flow(run: RunFolder, notebook: str, reasons: pd.Series,
                flagged: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Record which images a notebook analysed and why it left the others out.

    Parameters
    ----------
    run : the cohort's run folder.
    notebook : the notebook's stem (``"03_classifier_cv"``).
    reasons : image_id -> ``""`` (analysed) or the reason it was left out (:func:`funnel`); one
        entry per manifest image.
    flagged : image_id -> reason for analysed images worth a flag (e.g. segmentation QC in
        notebook 01, which segments every image but flags some for the later notebooks).

    Returns the rows written (``artifacts/flow/<notebook>.csv``); ``tables/flow.csv`` is rebuilt.
    """
    flagged = {str(k): v for k, v in (flagged or {}).items()}
    reasons = reasons.astype(object).fillna("").astype(str)
    outcome = ["left out" if r else ("flagged" if i in flagged else "analysed")
               for i, r in reasons.items()]
    why = [r or flagged.get(i, "") for i, r in reasons.items()]
    rows = pd.DataFrame({"image_id": reasons.index.astype(str), "notebook": notebook,
                         "outcome": outcome, "reason": why})
    folder = run.artifacts / FLOW_DIR
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / f"{notebook}.csv", index=False)
    run.save_table(flow_table(run), "flow")
    return rows


def record_intake(run: RunFolder, manifest: pd.DataFrame, report_path: str | Path | None
                  ) -> pd.DataFrame:
    """Record the images in (the manifest) and what the import and corpus steps left out before
    it (the rows of the QC report beside a real manifest with ``action = dropped``)."""
    rows = [pd.DataFrame({"image_id": manifest["image_id"].astype(str), "notebook": "manifest",
                          "outcome": "analysed", "reason": ""})]
    if report_path is not None and Path(report_path).is_file():
        report = pd.read_csv(report_path, dtype=str, keep_default_na=False)
        dropped = report[report.get("action", pd.Series(dtype=str)) == "dropped"]
        rows.append(pd.DataFrame({"image_id": dropped["image_id"], "notebook": INTAKE,
                                  "outcome": "left out", "reason": dropped["reason"]}))
    intake = pd.concat(rows, ignore_index=True)
    folder = run.artifacts / FLOW_DIR
    folder.mkdir(parents=True, exist_ok=True)
    intake.to_csv(folder / "intake.csv", index=False)
    run.save_table(flow_table(run), "flow")
    return intake


def flow_table(run: RunFolder | str | Path) -> pd.DataFrame:
    """The cohort's flow from the records of :func:`record_intake` and :func:`record_flow`.

    Returns
    -------
    DataFrame ``step`` (``manifest``, the intake, then each notebook in order), ``outcome``,
    ``reason`` (the intake's reasons shortened to their general part), ``images``. The first
    row is the images in.
    """
    root = run.root if isinstance(run, RunFolder) else Path(run)
    folder = root / "artifacts" / FLOW_DIR
    records = []
    intake = folder / "intake.csv"
    if intake.is_file():
        records.append(pd.read_csv(intake, dtype=str, keep_default_na=False))
    records += [pd.read_csv(p, dtype=str, keep_default_na=False)
                for p in sorted(folder.glob("[0-9][0-9]_*.csv"))]
    if not records:
        return pd.DataFrame(columns=["step", "outcome", "reason", "images"])
    rows = pd.concat(records, ignore_index=True)
    intake_rows = rows["notebook"] == INTAKE
    rows.loc[intake_rows, "reason"] = rows.loc[intake_rows, "reason"].map(short_reason)
    order = {name: k for k, name in enumerate(
        ["manifest", INTAKE] + sorted(set(rows["notebook"]) - {"manifest", INTAKE}))}
    table = (rows.groupby(["notebook", "outcome", "reason"], sort=False).size()
             .rename("images").reset_index().rename(columns={"notebook": "step"}))
    table["_step"] = table["step"].map(order)
    table["_outcome"] = table["outcome"].map({o: k for k, o in enumerate(OUTCOMES)})
    table = table.sort_values(["_step", "_outcome", "images"], ascending=[True, True, False])
    table.loc[table["step"] == "manifest", "reason"] = "images in"
    return table.drop(columns=["_step", "_outcome"]).reset_index(drop=True)


def flow_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per step: ``analysed``, ``flagged``, ``left out`` counts and the main reasons."""
    if table.empty:
        return pd.DataFrame(columns=["step", *OUTCOMES, "reasons"])
    counts = table.pivot_table(index="step", columns="outcome", values="images", aggfunc="sum",
                               sort=False).reindex(columns=list(OUTCOMES)).fillna(0).astype(int)
    reasons = (table[table["outcome"] != "analysed"]
               .assign(text=lambda t: t["reason"] + " (" + t["images"].astype(str) + ")")
               .groupby("step", sort=False)["text"].agg("; ".join))
    out = counts.join(reasons.rename("reasons")).fillna({"reasons": ""}).reset_index()
    return out




def flow_sentence(rows: pd.DataFrame) -> str:
    """One sentence on a notebook's record (:func:`record_flow`): images analysed of the
    manifest, and what was left out or flagged, by reason."""
    n = len(rows)
    parts = [f"This notebook analysed {int((rows['outcome'] != 'left out').sum())} of {n} images"]
    for outcome in ("left out", "flagged"):
        chosen = rows[rows["outcome"] == outcome]
        if len(chosen):
            counts = chosen["reason"].value_counts()
            parts.append(f"{outcome}: " + "; ".join(f"{r} ({k})" for r, k in counts.items()))
    return "; ".join(parts) + ". The whole flow is in `tables/flow.csv`."


__all__ = ["funnel", "record_flow", "record_intake", "flow_table", "flow_summary", "flow_sentence",
           "FLOW_DIR", "COLUMNS", "OUTCOMES", "INTAKE"]
