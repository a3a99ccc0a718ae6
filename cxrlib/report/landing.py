"""The headline findings of a run, for the top of its ``index.html`` (the reviewer's landing page).

Three findings, each read from the tables the run wrote (nothing here computes a result):

- :func:`paper_numbers`: each source paper's main number beside ours, with our 95% CI where the
  run has one (``<cohort>/model_cards/metrics_ci.csv``: pooled out-of-fold predictions, patient
  bootstrap). Seeds 001 and 000 from notebook 03's "beside the paper" tables, seeds 002 and 004
  from its hold-out transfer table, seed 003 from notebook 04's transfer to an unseen source;
  the papers' numbers come from those tables or from :mod:`cxrlib.paper_tables`.
- :func:`shortcut_findings`: notebook 04's shortcut verdicts (``tables/shortcut_verdicts.csv``),
  with the shortcut planted and on the shortcut-free twin, against what was planted, and
  notebook 06's balanced accuracy with and without the shortcut (``cv_planted_vs_clean.csv``).
- :func:`flow_overview`: per cohort, the images in and the images each notebook analysed
  (``tables/flow.csv``).

Each returns plain data (lists of dicts); a finding whose table the run did not write (the
notebook did not run, failed, or does not apply to the cohort) comes back as an entry with a
``missing`` reason instead of raising. :func:`headline_html` renders the three as the first
section of the index; :func:`shown_path` writes a path for a page without the machine's folders.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from cxrlib.paths import REPO_ROOT, data_dir

#: The source papers (README.md, "The source papers"), in the order of the headline table.
PAPERS = {
    "seed 001": "Arias-Londoño et al. 2020, a thoughtful evaluation (3 classes, lung segmentation)",
    "seed 000": "Tabik et al. 2020, COVIDGR and COVID-SDNet (binary)",
    "seed 002": "Civit-Masot et al. 2020, VGG16 on original vs equalised images",
    "seed 003": "medRxiv 2020.07.16.20155093, transfer to an unseen source",
    "seed 004": "Soares & Soares 2020, frozen ImageNet VGG16",
}

#: Views of notebook 03, in words (short).
VIEWS = {"exp1": "exp1, whole image", "exp2": "exp2, lung region", "exp3": "exp3, lungs only",
         "sdnet": "lung box crop", "sdnet@no_npcr": "lung box crop, without Normal-PCR+",
         "raw@holdout": "original images, 80/20 hold-out",
         "exp1@holdout": "equalised images, 80/20 hold-out"}

CI_TABLE = "model_cards/metrics_ci.csv"


# --------------------------------------------------------------------------------------------
# Reading the run folder


def cohort_dirs(run: str | Path) -> list[Path]:
    """The cohort folders of a run, in the order of its ``study.json`` (else by name)."""
    run = Path(run)
    claim = run / "study.json"
    names = list(json.loads(claim.read_text()).get("cohorts", {})) if claim.is_file() else []
    names = names or sorted(p.name for p in run.iterdir() if (p / "tables").is_dir())
    return [run / n for n in names if (run / n).is_dir()]


def read_table(cohort_dir: Path, rel: str) -> pd.DataFrame | None:
    """``cohort_dir/rel`` as a DataFrame; None when the run did not write it (or it is empty)."""
    path = Path(cohort_dir) / rel
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return None


def _pct(value) -> str:
    return "" if value is None or pd.isna(value) else f"{100 * float(value):.1f}"


def _ci_row(ci: pd.DataFrame | None, experiment: str, model: str, method: str | None = None
            ) -> pd.Series | None:
    """The row of ``metrics_ci.csv`` for one trained model (the first method when None)."""
    if ci is None or ci.empty:
        return None
    hit = ci[(ci["experiment"] == experiment) & (ci["model"] == model)]
    if method is not None:
        hit = hit[hit["method"] == method]
    return hit.iloc[0] if len(hit) else None


def _ours(ci: pd.DataFrame | None, experiment: str, model: str, method: str | None,
          metric: str, fallback: str, fallback_source: str) -> dict:
    """Our value of ``metric`` (``accuracy`` or ``balanced_accuracy``) with its 95% CI from
    ``metrics_ci.csv``; without it, ``fallback`` (the table's mean ± sd over folds)."""
    row = _ci_row(ci, experiment, model, method)
    if row is not None and pd.notna(row.get(metric)):
        return {"ours": _pct(row[metric]),
                "ci": f"{_pct(row[f'{metric}_ci_low'])}-{_pct(row[f'{metric}_ci_high'])}",
                "how": (f"pooled {'hold-out test' if '@holdout' in experiment else 'out-of-fold'}"
                        f" predictions, {int(row['n_patients'])} patients")}
    return {"ours": fallback, "ci": "",
            "how": f"mean ± sd over folds ({fallback_source}; no CI: not in {CI_TABLE})"}


def _entry(paper: str, cohort: str | None, **fields) -> dict:
    base = {"paper": paper, "label": PAPERS[paper], "cohort": cohort, "model": "", "measure": "",
            "paper_value": "", "ours": "", "ci": "", "how": "", "evidence": [], "missing": None}
    return {**base, **fields}


def _missing(paper: str, reason: str) -> dict:
    return _entry(paper, None, missing=reason)


# --------------------------------------------------------------------------------------------
# The papers' numbers beside ours


def arias_numbers(vs_paper: pd.DataFrame, ci: pd.DataFrame | None, cohort: str) -> list[dict]:
    """Seed 001: balanced accuracy per view (exp1-exp3) from notebook 03's
    ``cv_global_vs_paper.csv`` (columns ``experiment``, ``model``, ``method``, ``BAcc``,
    ``BAcc (paper)``), ours with the 95% CI of ``metrics_ci.csv`` when given."""
    rows = []
    for r in vs_paper.to_dict("records"):
        rows.append(_entry(
            "seed 001", cohort,
            model=f"{r['model']} ({VIEWS.get(r['experiment'], r['experiment'])})",
            measure="balanced accuracy %", paper_value=str(r["BAcc (paper)"]),
            evidence=[f"{cohort}/tables/cv_global_vs_paper.csv"],
            **_ours(ci, r["experiment"], r["model"], r["method"], "balanced_accuracy",
                    str(r["BAcc"]), "cv_global_vs_paper")))
    return rows


def tabik_numbers(vs_paper: pd.DataFrame, ci: pd.DataFrame | None, cohort: str) -> list[dict]:
    """Seed 000: accuracy of each model compared with a row of its Table 5, from notebook 03's
    ``cv_table5_vs_paper.csv`` (one row per ``metric``; the columns come in pairs: ours
    ``<experiment>/<model>``, then ``<paper method> (paper)``)."""
    acc = vs_paper[vs_paper["metric"] == "accuracy"]
    if acc.empty:
        return []
    acc = acc.iloc[0]
    columns = [c for c in vs_paper.columns if c != "metric"]
    rows = []
    for ours, theirs in zip(columns[::2], columns[1::2]):
        if not theirs.endswith(" (paper)"):
            continue
        experiment, _, model = ours.partition("/")
        rows.append(_entry(
            "seed 000", cohort,
            model=f"{model or experiment} ({VIEWS.get(experiment, experiment)}) vs the paper's "
                  f"{theirs[:-len(' (paper)')]}",
            measure="accuracy %", paper_value=str(acc[theirs]),
            evidence=[f"{cohort}/tables/cv_table5_vs_paper.csv"],
            **_ours(ci, experiment, model, None, "accuracy", str(acc[ours]),
                    "cv_table5_vs_paper")))
    return rows


def transfer_numbers(transfer: pd.DataFrame, ci: pd.DataFrame | None, cohort: str,
                     civit: pd.DataFrame, soares: pd.DataFrame) -> list[dict]:
    """Seeds 002 and 004: VGG16 accuracy on the 80/20 hold-out from notebook 03's
    ``cv_transfer_global.csv`` beside Civit-Masot's Tables 2-4 (``civit``: rows ``model``
    original / equalized, macro ``accuracy`` as a fraction) and Soares' validation accuracy
    (``soares``: ``architecture``, ``validation_accuracy`` in percent)."""
    civit = civit[civit["scope"] == "macro"].set_index("model")["accuracy"]
    soares = soares.set_index("architecture")["validation_accuracy"]
    wanted = [("seed 002", "raw@holdout", "civit2020", f"{100 * civit['original']:.0f}"),
              ("seed 002", "exp1@holdout", "civit2020", f"{100 * civit['equalized']:.0f}"),
              ("seed 004", "exp1@holdout", "soares2020", f"{soares['VGG16']:.1f}")]
    rows = []
    for paper, experiment, method, value in wanted:
        hit = transfer[(transfer["experiment"] == experiment) & (transfer["method"] == method)]
        if hit.empty:
            continue
        r = hit.iloc[0]
        sd = "" if pd.isna(r.get("accuracy_sd")) else f" ± {_pct(r['accuracy_sd'])}"
        rows.append(_entry(
            paper, cohort,
            model=f"{r['model']}, recipe {method} ({VIEWS.get(experiment, experiment)})",
            measure="accuracy %", paper_value=value,
            evidence=[f"{cohort}/tables/cv_transfer_global.csv"],
            **_ours(ci, experiment, r["model"], method, "accuracy",
                    _pct(r["accuracy_mean"]) + sd, "cv_transfer_global")))
    return rows


def unseen_source_numbers(external: pd.DataFrame, cohort: str, paper_auc: float) -> list[dict]:
    """Seed 003: AUC on a source never seen in training (the paper's ``transfer_blind_auc``,
    percent) beside notebook 04's hard transfer (``external_validation.csv``, scenario ``hard``,
    cohort ``given``): the mean external AUC over the held-out sources, with their range."""
    hard = external[external["scenario"] == "hard"]
    if "cohort" in hard:
        hard = hard[hard["cohort"] == "given"]
    if hard.empty:
        return []
    auc = hard["auc_external"].astype(float)
    spread = (f"{_pct(auc.min())}-{_pct(auc.max())} over {len(auc)} held-out sources"
              if len(auc) > 1 else f"one held-out source ({hard['held_out'].iloc[0]})")
    return [_entry("seed 003", cohort, model="logistic probe on image features (the paper: "
                   "Inception)", measure="AUC % on an unseen source",
                   paper_value=f"{paper_auc:.1f}",
                   ours=_pct(auc.mean()), ci="", how=spread,
                   evidence=[f"{cohort}/tables/external_validation.csv"])]


def paper_numbers(run: str | Path) -> list[dict]:
    """Every source paper's main number beside ours, for every cohort of the run that has it.

    Returns one dict per compared number: ``paper`` (``seed 001``...), ``label``, ``cohort``,
    ``model``, ``measure``, ``paper_value``, ``ours``, ``ci`` (``low-high``; empty without one),
    ``how`` (what ours is), ``evidence`` (paths relative to the run folder) and ``missing``
    (None; for a paper no cohort has a number for, a single entry whose ``missing`` says which
    table is absent).
    """
    from cxrlib import paper_tables
    found: dict[str, list[dict]] = {p: [] for p in PAPERS}
    for cdir in cohort_dirs(run):
        name, ci = cdir.name, read_table(cdir, CI_TABLE)
        if (t := read_table(cdir, "tables/cv_global_vs_paper.csv")) is not None:
            found["seed 001"] += arias_numbers(t, ci, name)
        if (t := read_table(cdir, "tables/cv_table5_vs_paper.csv")) is not None:
            found["seed 000"] += tabik_numbers(t, ci, name)
        if (t := read_table(cdir, "tables/cv_transfer_global.csv")) is not None:
            civit = paper_tables.load("civit2020_tables2to4_vgg16")
            soares = paper_tables.load("soares2020_results")
            for row in transfer_numbers(t, ci, name, civit, soares):
                found[row["paper"]].append(row)
        if (t := read_table(cdir, "tables/external_validation.csv")) is not None:
            blind = paper_tables.load("inception2020_results").set_index("quantity")["value"]
            found["seed 003"] += unseen_source_numbers(t, name, float(blind["transfer_blind_auc"]))
    why = {"seed 001": "no cohort has tables/cv_global_vs_paper.csv (notebook 03 on a 3-class "
                       "cohort)",
           "seed 000": "no cohort has tables/cv_table5_vs_paper.csv (notebook 03 on a binary "
                       "control / COVID-19 cohort)",
           "seed 002": "no cohort has seed 002's rows in tables/cv_transfer_global.csv (notebook "
                       "03 with profile.cls_extra_seeds on a 3-class cohort)",
           "seed 003": "no cohort has tables/external_validation.csv (notebook 04)",
           "seed 004": "no cohort has seed 004's rows in tables/cv_transfer_global.csv (notebook "
                       "03 with profile.cls_extra_seeds on a 3-class cohort)"}
    return [row for paper in PAPERS
            for row in (found[paper] or [_missing(paper, f"not in this run: {why[paper]}")])]


# --------------------------------------------------------------------------------------------
# Shortcut verdicts


def verdict_summary(verdicts: pd.DataFrame, cohort: str) -> dict:
    """Notebook 04's verdicts (``shortcut_verdicts.csv``: ``question``, ``answer``, ``gain``,
    ``gain_ci_low``, ``margin``, ``cohort`` = ``given`` / ``twin``, ``synth_shortcut``) as one
    row per question with an answer per probed cohort.

    Returns ``cohort``, ``columns`` (one per probed cohort: ``key``, ``title``, ``knob``,
    ``truth`` "yes"/"no" or None for a real corpus, ``all_match`` True/False/None), ``rows``
    (``question`` and ``answers``: per column ``answer``, ``gain``, ``gain_ci_low`` or None),
    ``margin`` and ``evidence``.
    """
    from cxrlib.analysis.shortcuts import verdicts_against_truth

    if "cohort" not in verdicts:
        verdicts = verdicts.assign(cohort="given")
    if "synth_shortcut" not in verdicts:
        verdicts = verdicts.assign(synth_shortcut=float("nan"))
    truth = verdicts_against_truth(verdicts).set_index("cohort")
    columns = []
    for key in verdicts["cohort"].drop_duplicates():
        knob = truth.loc[key, "synth_shortcut"]
        title = cohort if key == "given" else "its twin without the shortcut"
        if pd.notna(knob):
            title += f" (shortcut knob {float(knob):g}: {'planted' if knob >= 0.5 else 'absent'})"
        columns.append({"key": key, "title": title, "knob": None if pd.isna(knob) else float(knob),
                        "truth": truth.loc[key, "truth"],
                        "all_match": (None if pd.isna(truth.loc[key, "all_match"])
                                      else bool(truth.loc[key, "all_match"]))})
    rows = []
    for question, part in verdicts.groupby("question", sort=False):
        by = part.set_index("cohort")
        rows.append({"question": question, "answers": [
            {"answer": by.loc[c["key"], "answer"], "gain": float(by.loc[c["key"], "gain"]),
             "gain_ci_low": float(by.loc[c["key"], "gain_ci_low"])} if c["key"] in by.index
            else None for c in columns]})
    margin = float(verdicts["margin"].iloc[0]) if "margin" in verdicts else None
    return {"cohort": cohort, "columns": columns, "rows": rows, "margin": margin,
            "evidence": [f"{cohort}/tables/shortcut_verdicts.csv"]}


def planted_vs_clean(table: pd.DataFrame, cohort: str) -> list[dict]:
    """Notebook 06's ``cv_planted_vs_clean.csv``: per view, notebook 03's balanced accuracy with
    the shortcut planted and without it (percent) and the difference (points)."""
    return [{"cohort": cohort, "model": r["model"], "experiment": r["experiment"],
             "planted": _pct(r["balanced_accuracy_mean_planted"]),
             "clean": _pct(r["balanced_accuracy_mean_clean"]),
             "difference": f"{100 * r['difference']:+.1f}"} for r in table.to_dict("records")]


def shortcut_findings(run: str | Path) -> dict:
    """Shortcut verdicts and accuracy with and without the shortcut, for every cohort that has
    them: ``verdicts`` (list of :func:`verdict_summary`), ``accuracy`` (rows of
    :func:`planted_vs_clean`, with ``evidence``) and ``missing`` (a reason, or None)."""
    verdicts, accuracy, evidence = [], [], []
    for cdir in cohort_dirs(run):
        if (t := read_table(cdir, "tables/shortcut_verdicts.csv")) is not None and len(t):
            verdicts.append(verdict_summary(t, cdir.name))
        if (t := read_table(cdir, "tables/cv_planted_vs_clean.csv")) is not None:
            accuracy += planted_vs_clean(t, cdir.name)
            evidence.append(f"{cdir.name}/tables/cv_planted_vs_clean.csv")
    missing = None if verdicts else ("not in this run: no cohort has tables/shortcut_verdicts"
                                     ".csv (notebook 04, which runs on the arias cohort or a "
                                     "real corpus)")
    return {"verdicts": verdicts, "accuracy": accuracy, "accuracy_evidence": evidence,
            "missing": missing}


# --------------------------------------------------------------------------------------------
# Flow of images


def flow_counts(flow: pd.DataFrame) -> dict:
    """``tables/flow.csv`` (``step``, ``outcome``, ``reason``, ``images``) in short: ``images_in``
    (the ``manifest`` step) and per notebook step ``analysed``, ``flagged``, ``left out``."""
    from cxrlib.flow import OUTCOMES, flow_summary

    summary = flow_summary(flow)
    steps = {}
    images_in = None
    for r in summary.to_dict("records"):
        if r["step"] == "manifest":
            images_in = int(r["analysed"])
            continue
        steps[str(r["step"])] = {o: int(r[o]) for o in OUTCOMES}
    return {"images_in": images_in, "steps": steps}


def flow_overview(run: str | Path) -> list[dict]:
    """Per cohort: ``cohort``, ``images_in``, ``steps`` (:func:`flow_counts`), ``evidence``, and
    ``missing`` (a reason when the cohort has no ``tables/flow.csv``)."""
    rows = []
    for cdir in cohort_dirs(run):
        flow = read_table(cdir, "tables/flow.csv")
        if flow is None:
            rows.append({"cohort": cdir.name, "images_in": None, "steps": {}, "evidence": [],
                         "missing": "no tables/flow.csv (no notebook recorded its flow)"})
            continue
        rows.append({"cohort": cdir.name, **flow_counts(flow.fillna({"reason": ""})),
                     "evidence": [f"{cdir.name}/tables/flow.csv"], "missing": None})
    return rows


# --------------------------------------------------------------------------------------------
# Paths on a page


def shown_path(path: str | Path | None) -> str:
    """A path as a page may show it: relative to the repository, or to the data folder
    (``$CXR_DATA_DIR/...``), else the file name alone; never the machine's folders."""
    if not path:
        return ""
    path = Path(path)
    for root, prefix in ((REPO_ROOT, ""), (data_dir(), "$CXR_DATA_DIR/")):
        try:
            return prefix + path.resolve().relative_to(root).as_posix()
        except ValueError:
            continue
    return path.name


#: What a rendered report must never show: Python reprs a notebook cell let through (a path a
#: save returned, a figure or axes object, a DataFrame's attrs) - the machine's folders are
#: added by :func:`stray_text`.
STRAY_PATTERNS = (r"\b(?:Posix|Windows)?Path\('", r"<Figure size \d", r"<matplotlib\.",
                  r"<Axes[:\s]", r"DataFrame\.attrs", r"<[\w.]+ object at 0x[0-9a-f]+>")


def stray_text(text: str, machine_paths=()) -> list[str]:
    """Snippets of ``text`` (a page's visible text) that show a stray Python repr
    (:data:`STRAY_PATTERNS`) or one of ``machine_paths`` (the run folder, the repository, the
    home folder, ``/tmp``...); empty when the page is clean."""
    import re

    paths = sorted({str(p).rstrip("/") for p in machine_paths if str(p).strip("/")}, key=len,
                   reverse=True)
    pattern = "|".join([*STRAY_PATTERNS, *(re.escape(p) + r"(?=[/\s'\"),.:;]|$)"
                                           for p in paths)])
    return [text[max(0, m.start() - 60):m.end() + 60].replace("\n", " ")
            for m in re.finditer(pattern, text)]


# --------------------------------------------------------------------------------------------
# HTML


def _links(paths, esc=html.escape) -> str:
    return ", ".join(f"<a href='{esc(p)}'>{esc(Path(p).stem)}</a>" for p in paths)


def _numbers_html(rows: list[dict], esc=html.escape) -> str:
    parts = ["<table class='headline'><tr><th>cohort</th><th>model (view)</th>"
             "<th>paper</th><th>ours (95% CI)</th><th>evidence</th></tr>"]
    for paper in PAPERS:
        mine = [r for r in rows if r["paper"] == paper]
        if not mine:
            continue
        measure = next((r["measure"] for r in mine if r["measure"]), "")
        parts.append(f"<tr class='paper'><th colspan='5'>{esc(paper)}: {esc(PAPERS[paper])}"
                     + (f" <span class='measure'>({esc(measure)})</span>" if measure else "")
                     + "</th></tr>")
        for r in mine:
            if r["missing"]:
                parts.append(f"<tr><td colspan='5' class='missing'>{esc(r['missing'])}</td></tr>")
                continue
            ci = f" <span class='nowrap'>({esc(r['ci'])})</span>" if r["ci"] else ""
            parts.append(
                f"<tr><td>{esc(r['cohort'])}</td><td>{esc(r['model'])}</td>"
                f"<td class='num nowrap'>{esc(r['paper_value'])}</td>"
                f"<td class='num'><b>{esc(r['ours'])}</b>{ci}<br><small>{esc(r['how'])}</small>"
                f"</td><td>{_links(r['evidence'])}</td></tr>")
    return "".join(parts) + "</table>"


def _verdicts_html(found: dict, esc=html.escape) -> str:
    if found["missing"] and not found["accuracy"]:
        return f"<p class='missing'>{esc(found['missing'])}</p>"
    parts = []
    for v in found["verdicts"]:
        parts.append("<table class='headline'><tr><th>question (a probe trained on masked "
                     "images)</th>" + "".join(f"<th>{esc(c['title'])}</th>" for c in v["columns"])
                     + "</tr>")
        for row in v["rows"]:
            cells = []
            for a in row["answers"]:
                if a is None:
                    cells.append("<td></td>")
                    continue
                cells.append(f"<td><b>{esc(str(a['answer']))}</b> <small>(gain "
                             f"{a['gain']:+.2f}, lower CI bound {a['gain_ci_low']:+.2f})</small>"
                             "</td>")
            parts.append(f"<tr><td>{esc(row['question'])}</td>{''.join(cells)}</tr>")
        match = [c for c in v["columns"] if c["all_match"] is not None]
        if match:
            parts.append("<tr><td><i>every answer as planted?</i></td>" + "".join(
                "<td></td>" if c["all_match"] is None else
                f"<td><b class='{'ok' if c['all_match'] else 'failed'}'>"
                f"{'yes' if c['all_match'] else 'no'}</b> <small>(planted: {esc(c['truth'])} to "
                "every question)</small></td>" for c in v["columns"]) + "</tr>")
        parts.append("</table>")
        margin = f" {v['margin']:.2f}" if v["margin"] is not None else ""
        parts.append(f"<p><small>A verdict is <i>yes</i> when the lower 95% CI bound of the "
                     f"probe's balanced-accuracy gain over chance exceeds the margin{margin} "
                     f"({_links(v['evidence'])}).</small></p>")
    if found["missing"]:
        parts.append(f"<p class='missing'>{esc(found['missing'])}</p>")
    if found["accuracy"]:
        parts.append("<p>Balanced accuracy of notebook 03's classifier with the shortcut planted "
                     "and without it (mean over folds, %): " + "; ".join(
                         f"{esc(a['cohort'])} {esc(a['model'])} {esc(a['experiment'])} "
                         f"{esc(a['planted'])} vs {esc(a['clean'])} ({esc(a['difference'])} "
                         "points)" for a in found["accuracy"])
                     + f" ({_links(found['accuracy_evidence'])}).</p>")
    return "".join(parts)


def _flow_overview_html(rows: list[dict], esc=html.escape) -> str:
    if not rows:
        return "<p class='missing'>No cohort in this run folder.</p>"
    # the notebooks in order, after what came before the study (a real corpus's intake)
    steps = sorted({s for r in rows for s in r["steps"]}, key=lambda s: (s[:2].isdigit(), s))
    parts = ["<table class='headline'><tr><th>cohort</th><th>images in</th>"
             + "".join(f"<th>{esc(s).replace('_', '_<wbr>')}</th>" for s in steps) + "</tr>"]
    for r in rows:
        if r["missing"]:
            parts.append(f"<tr><td>{esc(r['cohort'])}</td><td colspan='{len(steps) + 1}' "
                         f"class='missing'>{esc(r['missing'])}</td></tr>")
            continue
        cells = []
        for s in steps:
            c = r["steps"].get(s)
            if c is None:
                cells.append("<td class='skipped'>-</td>")
                continue
            notes = [f"{c[k]} {k}" for k in ("flagged", "left out") if c[k]]
            cells.append(f"<td class='num'>{c['analysed'] + c['flagged']}"
                         + (f"<br><small>{esc(', '.join(notes))}</small>" if notes else "")
                         + "</td>")
        link = f"<a href='{esc(r['evidence'][0])}'>{esc(r['cohort'])}</a>"
        parts.append(f"<tr><td>{link}</td><td class='num'>{r['images_in'] or ''}</td>"
                     + "".join(cells) + "</tr>")
    return "".join(parts) + "</table>"


def headline_html(run: str | Path, caveat: str = "", problems: list[str] | None = None) -> str:
    """The landing page's first section: the papers' numbers beside ours, the shortcut verdicts
    and the flow of images, each from the run's tables (:func:`paper_numbers`,
    :func:`shortcut_findings`, :func:`flow_overview`). ``caveat``: a sentence on what the numbers
    can show (e.g. a synthetic cohort at the smoke profile); ``problems``: notebooks that failed
    or are stale, named above the findings. A finding that cannot be read is shown with its
    error instead of raising, so the rest of the index is always written."""
    esc = html.escape
    parts = ["<h2 id='findings'>Headline findings</h2>"]
    if caveat:
        parts.append(f"<p class='caveat'>{esc(caveat)}</p>")
    if problems:
        parts.append("<p class='failed'>Not every notebook finished: " + "; ".join(
            esc(p) for p in problems) + ". Their findings are missing or stale below "
            "(<a href='#reports'>reports</a>).</p>")
    sections = (
        ("The papers' numbers beside ours",
         "Each source paper's main number as printed (mean ± sd over its folds, on its own "
         "corpus) beside ours on this run's cohorts: pooled out-of-fold predictions with a 95% "
         "patient-bootstrap CI where the run has one.", paper_numbers, _numbers_html),
        ("Shortcut verdicts",
         "Can a classifier tell the label or the source without looking at the lungs? "
         "(notebook 04; on a synthetic cohort the answer is known: the shortcut was planted or "
         "not)", shortcut_findings, _verdicts_html),
        ("Flow of images",
         "Images in, then the images each notebook analysed (under it: how many of them it "
         "flagged, and the images it left out; the reasons are in each cohort's section "
         "below; - : the notebook does not run on the cohort).", flow_overview,
         _flow_overview_html),
    )
    for title, intro, read, render in sections:
        parts.append(f"<h3>{esc(title)}</h3><p>{esc(intro)}</p>")
        try:
            parts.append(render(read(run)))
        except Exception as exc:  # noqa: BLE001 - shown on the page, never hides the index
            parts.append(f"<p class='failed'>Could not be read from the run's tables: "
                         f"{esc(f'{type(exc).__name__}: {exc}')}</p>")
    return "".join(parts)


#: CSS the headline needs (added to the index's own style sheet).
HEADLINE_CSS = (".headline td.num{text-align:right;font-variant-numeric:tabular-nums}"
                ".nowrap{white-space:nowrap}.measure{font-weight:normal}"
                "tr.paper th{background:#e8eef7}.missing{color:#b7791f}"
                ".caveat{background:#fff8e1;border-left:4px solid #f0b429;padding:.4em .8em}"
                "small{color:#555}")


__all__ = ["PAPERS", "paper_numbers", "arias_numbers", "tabik_numbers", "transfer_numbers",
           "unseen_source_numbers", "shortcut_findings", "verdict_summary", "planted_vs_clean",
           "flow_overview", "flow_counts", "shown_path", "stray_text", "STRAY_PATTERNS",
           "headline_html", "HEADLINE_CSS",
           "cohort_dirs", "read_table"]
