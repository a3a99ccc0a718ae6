"""The reviewer's landing page (cxrlib.report.landing): the headline findings read from hand-made
tables, with hand-computed expectations; and, on the shared smoke run, the index and every rendered
report checked without a browser (links resolve, no stray Python repr or machine path)."""
import ast
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlib.report import landing
from cxrlib.paths import NOTEBOOKS_DIR, REPO_ROOT

# --------------------------------------------------------------------------------------------
# hand-made tables


def _ci(rows):
    """metrics_ci.csv rows: (experiment, model, method, accuracy, low, high, n_patients); the
    balanced accuracy is the accuracy minus 0.1 with the same CI width."""
    return pd.DataFrame([{"experiment": e, "model": m, "method": k, "accuracy": a,
                          "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                          "balanced_accuracy": a - 0.1, "balanced_accuracy_ci_low": lo - 0.1,
                          "balanced_accuracy_ci_high": hi - 0.1, "n": 2 * n, "n_patients": n}
                         for e, m, k, a, lo, hi, n in rows])


ARIAS_VS_PAPER = pd.DataFrame({
    "experiment": ["exp1", "exp3"], "model": ["covidnet"] * 2, "method": ["arias2020-fast"] * 2,
    "Acc": ["60.00 ± 5.00", "55.00 ± 1.00"], "Acc (paper)": ["91.67 ± 2.56", "91.53 ± 0.20"],
    "BAcc": ["50.00 ± 4.00", "45.00 ± 2.00"], "BAcc (paper)": ["94.43 ± 1.36", "87.64 ± 0.74"]})

TABIK_VS_PAPER = pd.DataFrame({
    "metric": ["neg_specificity", "accuracy"],
    "exp1/covidnet": ["40.00 ± 1.00", "50.00 ± 0.00"],
    "ResNet-50 without segmentation (paper)": ["79.87 ± 8.91", "74.25 ± 3.61"],
    "sdnet/covid-sdnet": ["70.00 ± 2.00", "65.00 ± 3.00"],
    "COVID-SDNet (paper)": ["79.76 ± 6.19", "76.18 ± 2.70"]})


def test_arias_numbers_put_ours_with_its_ci_beside_the_papers_balanced_accuracy():
    ci = _ci([("exp1", "covidnet", "arias2020-fast", 0.6, 0.35, 0.85, 40)])
    rows = landing.arias_numbers(ARIAS_VS_PAPER, ci, "arias")
    assert [r["paper"] for r in rows] == ["seed 001", "seed 001"]
    exp1, exp3 = rows
    # balanced accuracy 0.6 - 0.1 = 0.5, CI 0.25-0.75
    assert (exp1["paper_value"], exp1["ours"], exp1["ci"]) == ("94.43 ± 1.36", "50.0", "25.0-75.0")
    assert exp1["how"] == "pooled out-of-fold predictions, 40 patients"
    assert exp1["evidence"] == ["arias/tables/cv_global_vs_paper.csv"] and exp1["cohort"] == "arias"
    assert "exp1, whole image" in exp1["model"] and exp1["measure"] == "balanced accuracy %"
    # no CI row for exp3: the table's mean ± sd over folds, and why there is no CI
    assert (exp3["paper_value"], exp3["ours"], exp3["ci"]) == ("87.64 ± 0.74", "45.00 ± 2.00", "")
    assert "no CI: not in model_cards/metrics_ci.csv" in exp3["how"]


def test_tabik_numbers_pair_each_model_with_its_table5_row():
    ci = _ci([("sdnet", "covid-sdnet", "tabik2020", 0.625, 0.5, 0.75, 32)])
    rows = landing.tabik_numbers(TABIK_VS_PAPER, ci, "covidgr")
    assert [(r["paper_value"], r["ours"], r["ci"]) for r in rows] == [
        ("74.25 ± 3.61", "50.00 ± 0.00", ""), ("76.18 ± 2.70", "62.5", "50.0-75.0")]
    assert "ResNet-50 without segmentation" in rows[0]["model"]
    assert rows[1]["model"].startswith("covid-sdnet (lung box crop)")
    assert all(r["measure"] == "accuracy %" and r["paper"] == "seed 000" for r in rows)
    assert landing.tabik_numbers(TABIK_VS_PAPER[TABIK_VS_PAPER["metric"] != "accuracy"], ci,
                                 "covidgr") == []


def test_transfer_numbers_read_seeds_002_and_004_from_the_holdout_table():
    transfer = pd.DataFrame({
        "experiment": ["raw@holdout", "exp1@holdout"], "model": ["vgg16", "vgg16"],
        "method": ["civit2020", "soares2020"], "accuracy_mean": [0.7, 0.6],
        "accuracy_sd": [np.nan, 0.05]})
    civit = pd.DataFrame({"model": ["original", "equalized", "original"],
                          "scope": ["macro", "macro", "per_class"], "accuracy": [0.86, 0.85, None]})
    soares = pd.DataFrame({"architecture": ["VGG16", "Xception"],
                           "validation_accuracy": [97.3, 95.9]})
    ci = _ci([("raw@holdout", "vgg16", "civit2020", 0.7, 0.5, 0.9, 10)])
    rows = landing.transfer_numbers(transfer, ci, "arias", civit, soares)
    # seed 002's equalised row is not in the table: left out, not invented
    assert [(r["paper"], r["paper_value"], r["ours"], r["ci"]) for r in rows] == [
        ("seed 002", "86", "70.0", "50.0-90.0"), ("seed 004", "97.3", "60.0 ± 5.0", "")]
    assert rows[0]["how"] == "pooled hold-out test predictions, 10 patients"


def test_unseen_source_auc_is_the_mean_of_the_hard_transfers_of_the_given_cohort():
    external = pd.DataFrame({
        "held_out": ["CRX8", "SrcB", "CRX8", "CRX8"],
        "scenario": ["hard", "hard", "soft 10%", "hard"],
        "auc_external": [0.8, 0.6, 0.95, 0.99], "cohort": ["given", "given", "given", "twin"]})
    (row,) = landing.unseen_source_numbers(external, "arias", 89.1)
    assert (row["paper"], row["paper_value"], row["ours"]) == ("seed 003", "89.1", "70.0")
    assert row["how"] == "60.0-80.0 over 2 held-out sources" and row["ci"] == ""
    assert landing.unseen_source_numbers(external[external["scenario"] != "hard"], "arias",
                                         89.1) == []


def _verdicts():
    rows = []
    for cohort, knob, answers in (("given", 1.0, ("yes", "no")), ("twin", 0.0, ("no", "no"))):
        for question, answer in zip(("labels without the lungs", "source with the lungs removed"),
                                    answers):
            rows.append({"question": question, "answer": answer,
                         "gain": 0.3 if answer == "yes" else 0.0,
                         "gain_ci_low": 0.2 if answer == "yes" else -0.1, "margin": 0.1,
                         "cohort": cohort, "synth_shortcut": knob})
    return pd.DataFrame(rows)


def test_verdicts_per_question_and_against_what_was_planted():
    summary = landing.verdict_summary(_verdicts(), "arias")
    given, twin = summary["columns"]
    assert given["title"].startswith("arias (shortcut knob 1: planted")
    assert "twin" in twin["title"] and "absent" in twin["title"]
    # planted: yes expected everywhere, one "no" -> no match; twin: no everywhere -> match
    assert (given["truth"], given["all_match"]) == ("yes", False)
    assert (twin["truth"], twin["all_match"]) == ("no", True)
    first = summary["rows"][0]
    assert first["question"] == "labels without the lungs"
    assert [a["answer"] for a in first["answers"]] == ["yes", "no"]
    assert first["answers"][0]["gain_ci_low"] == pytest.approx(0.2)
    assert summary["margin"] == pytest.approx(0.1)


def test_flow_counts_from_the_flow_table():
    flow = pd.DataFrame(
        [("manifest", "analysed", "images in", 10), ("01_lung_segmentation", "analysed", "", 8),
         ("01_lung_segmentation", "flagged", "lungs too small", 2),
         ("03_classifier_cv", "analysed", "", 8), ("03_classifier_cv", "left out", "QC", 1),
         ("03_classifier_cv", "left out", "no view", 1)],
        columns=["step", "outcome", "reason", "images"])
    counts = landing.flow_counts(flow)
    assert counts["images_in"] == 10
    assert counts["steps"] == {
        "01_lung_segmentation": {"analysed": 8, "flagged": 2, "left out": 0},
        "03_classifier_cv": {"analysed": 8, "flagged": 0, "left out": 2}}


def _write(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def test_a_run_without_the_tables_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    (run / "a" / "tables").mkdir(parents=True)
    (run / "b" / "tables").mkdir(parents=True)
    (run / "study.json").write_text(json.dumps({"cohorts": {"b": {}, "a": {}}}))
    _write(run / "a" / "tables" / "cv_global_vs_paper.csv", ARIAS_VS_PAPER)
    numbers = landing.paper_numbers(run)
    assert [r["paper"] for r in numbers] == [
        "seed 001", "seed 001", "seed 000", "seed 002", "seed 003", "seed 004"]
    assert all(r["missing"] is None for r in numbers[:2]) and numbers[0]["cohort"] == "a"
    assert "cv_table5_vs_paper.csv" in numbers[2]["missing"]
    assert "external_validation.csv" in numbers[4]["missing"]
    shortcuts = landing.shortcut_findings(run)
    assert shortcuts["verdicts"] == [] and "shortcut_verdicts.csv" in shortcuts["missing"]
    flow = landing.flow_overview(run)
    assert [f["cohort"] for f in flow] == ["b", "a"]  # the study's order
    assert all("flow.csv" in f["missing"] for f in flow)
    page = landing.headline_html(run, caveat="synthetic", problems=["a/03 failed"])
    assert "Headline findings" in page and "not in this run" in page and "a/03 failed" in page
    assert "94.43 ± 1.36" in page and "href='a/tables/cv_global_vs_paper.csv'" in page


def test_an_unreadable_table_is_shown_not_raised(tmp_path):
    run = tmp_path / "run"
    _write(run / "a" / "tables" / "cv_global_vs_paper.csv", pd.DataFrame({"x": [1]}))
    _write(run / "a" / "tables" / "shortcut_verdicts.csv", _verdicts())
    page = landing.headline_html(run)
    assert "Could not be read from the run's tables: KeyError" in page
    assert "Shortcut verdicts" in page and "source with the lungs removed" in page


def test_shown_path_never_shows_the_machines_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "data"))
    assert landing.shown_path(REPO_ROOT / "data_manifests" / "mine.csv") == \
        "data_manifests/mine.csv"
    assert landing.shown_path(tmp_path / "data" / "synthetic" / "m.csv") == \
        "$CXR_DATA_DIR/synthetic/m.csv"
    assert landing.shown_path(tmp_path / "elsewhere" / "corpus.csv") == "corpus.csv"
    assert landing.shown_path(None) == ""


def test_stray_text_finds_reprs_and_machine_paths():
    text = ("Figure saved. PosixPath('/srv/run/figures/a.png') <Figure size 640x480 with 1 Axes> "
            "<cxrlib.study.Study object at 0x7f00aa> see /srv/run/arias/tables/x.csv; /srvx ok")
    found = landing.stray_text(text, ["/srv/run"])
    assert len(found) == 5  # the repr, its path, the figure, the object and the other path
    assert landing.stray_text("Path of the images: a plain sentence. 3 < 4.", ["/srv/run"]) == []


def test_no_notebook_cell_displays_the_path_a_save_returns():
    """A cell whose last line is ``run.save_figure(...)`` shows ``PosixPath('<run>/...')``
    in its report; such a line ends with ``;``."""
    returns_a_path = {"save_figure", "save_table", "artifact", "to_csv"}
    shown = []
    for nb in sorted(NOTEBOOKS_DIR.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or not source.strip():
                continue
            last = ast.parse(source).body[-1]
            if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                    and getattr(last.value.func, "attr", None) in returns_a_path
                    and not source.rstrip().endswith(";")):
                shown.append(f"{nb.name} cell {i}")
    assert not shown, f"cells that display a saved file's path: {shown}"


# --------------------------------------------------------------------------------------------
# the smoke run's pages, without a browser


class _Page(HTMLParser):
    """Visible text (not scripts or styles), links and images of an HTML page."""

    def __init__(self):
        super().__init__()
        self.hidden, self.text, self.links, self.images = 0, [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "style"):
            self.hidden += 1
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        elif tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.text.append(data)


def read_page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def machine_paths(run: Path) -> list[str]:
    """The folders no report may show: the run's, the repository's, the home folder, /tmp."""
    return [str(run), str(run.resolve()), str(REPO_ROOT), str(Path.home()), "/tmp", "/home"]


def local_target(page: Path, href: str) -> Path | None:
    """The file a relative link points to (None for a web link or an anchor)."""
    if href.startswith(("http:", "https:", "mailto:", "#", "data:", "javascript:")):
        return None
    return (page.parent / href.split("#")[0].split("?")[0]).resolve()


@pytest.mark.notebook
def test_index_leads_with_the_findings_and_every_local_link_resolves(smoke_run):
    _, out = smoke_run
    index = out / "index.html"
    html = index.read_text()
    assert html.index("Headline findings") < html.index("id='reports'")
    numbers = landing.paper_numbers(out)
    # every paper has a number on the smoke run (seeds 002/004: cls_extra_seeds is on)
    assert {r["paper"] for r in numbers if r["missing"] is None} == set(landing.PAPERS)
    assert landing.shortcut_findings(out)["missing"] is None
    assert "every answer as planted?" in html
    page = read_page(index)
    broken = [h for h in page.links if (t := local_target(index, h)) and not t.exists()]
    assert not broken, f"links of index.html to missing files: {broken}"
    assert not landing.stray_text("".join(page.text), machine_paths(out))
    checklist = (out / "checklist.html").read_text()
    assert "<i>left to the authors</i>" in checklist and "*left to the authors*" not in checklist


@pytest.mark.notebook
def test_no_report_shows_a_python_repr_or_a_machine_path(smoke_run):
    _, out = smoke_run
    found = {}
    for path in sorted(out.rglob("*.html")):
        if "stale" in path.relative_to(out).parts:
            continue
        page = read_page(path)
        stray = landing.stray_text("".join(page.text), machine_paths(out))
        missing = [s for s in page.images if (t := local_target(path, s)) and not t.exists()]
        if stray or missing:
            found[str(path.relative_to(out))] = stray[:3] + missing[:3]
    for path in [out / "checklist.md", *sorted(out.glob("*/model_cards/*.md"))]:
        if stray := landing.stray_text(path.read_text(), machine_paths(out)):
            found[str(path.relative_to(out))] = stray[:3]
    assert not found, f"reports with stray text or missing images: {found}"
