"""The reporting checklist (cxrlib.report.checklist): on a hand-made tiny run folder, and on the
session's smoke run (the ``smoke_run`` fixture of conftest.py, shared with the notebook tests)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlib.report import checklist as cl
from cxrlib.report import model_cards as mc
def write_tiny_run(run: Path, cohort: str = "demo") -> Path:
    """A run folder with one cohort of 10 images of 5 patients and the few tables and
    artifacts the checklist reads (no bias, shortcut or Grad-CAM tables)."""
    cdir = run / cohort
    (cdir / "tables").mkdir(parents=True)
    (cdir / "artifacts").mkdir()
    (cdir / "00_data_audit.html").write_text("<html></html>")
    (run / "study.json").write_text(json.dumps({"cohorts": {cohort: {"manifest": ""}}}))
    (run / "run.json").write_text(json.dumps({"versions": {"python": "3.11", "torch": "9.9",
                                                           "git_commit": "abc1234"}}))
    pd.DataFrame({"source": ["SrcA", "SrcB", "total"], "control": [6, 0, 6],
                  "covid19": [0, 4, 4], "total": [6, 4, 10], "patients": [3, 2, 5]}
                 ).to_csv(cdir / "tables" / "cohort_by_class_source.csv", index=False)
    pd.DataFrame({"step": ["manifest", "03_classifier_cv", "03_classifier_cv"],
                  "outcome": ["analysed", "analysed", "left out"],
                  "reason": ["images in", "", "failed segmentation QC"], "images": [10, 9, 1]}
                 ).to_csv(cdir / "tables" / "flow.csv", index=False)
    ids = [f"i{k}" for k in range(10)]
    pd.DataFrame({"image_id": ids, "group": [f"p{k // 2}" for k in range(10)], "repetition": 0,
                  "fold": [(k // 2) % 2 for k in range(10)]}
                 ).to_csv(cdir / "artifacts" / "split_plan.csv", index=False)
    labels = ["control"] * 6 + ["covid19"] * 4
    predicted = ["control"] * 5 + ["covid19"] * 5  # 9 of 10 right
    p_covid = np.where(np.array(predicted) == "covid19", 0.8, 0.2)
    pd.DataFrame({"image_id": ids, "repetition": 0, "fold": [(k // 2) % 2 for k in range(10)],
                  "experiment": "exp1", "model": "covidnet", "method": "arias2020-fast",
                  "label": labels, "p_control": 1 - p_covid, "p_covid19": p_covid,
                  "predicted": predicted}).to_parquet(cdir / "artifacts" / "predictions.parquet")
    pd.DataFrame({"experiment": "exp1", "model": "covidnet", "method": "arias2020-fast",
                  "repetition": 0, "fold": [0, 1], "view": "exp1", "image_size": 64,
                  "width": 0.25, "n_train": [4, 4], "n_valid": [1, 1], "n_test": [5, 5],
                  "epochs_run": [2, 3], "best_epoch": [1, 2], "stopped_early": [False, True],
                  "init": "random initialisation"}
                 ).to_csv(cdir / "artifacts" / "crossval_runs.csv", index=False)
    return run


def _answer(items: pd.DataFrame, guideline: str, item: str) -> pd.Series:
    return items[(items["guideline"] == guideline) & (items["item"] == item)].iloc[0]


def test_items_are_numbered_and_answer_keys_exist():
    assert {g for g, *_ in cl.ITEMS} == {cl.CLAIM, cl.TRIPOD}
    claim = [n for g, n, *_ in cl.ITEMS if g == cl.CLAIM]
    assert claim == [str(k) for k in range(1, 45)]  # CLAIM 2024 has 44 items
    tripod = {n.rstrip("abcdefg") for g, n, *_ in cl.ITEMS if g == cl.TRIPOD}
    assert tripod == {str(k) for k in range(1, 28)}  # TRIPOD+AI has 27 numbered items
    assert {key for *_, key in cl.ITEMS if key} <= set(cl.ANSWERS)


def test_tiny_run_folder(tmp_path):
    run = write_tiny_run(tmp_path / "run")
    mc.write_model_cards(run / "demo", n_boot=20)
    items = cl.checklist(run)
    assert len(items) == len(cl.ITEMS)
    sources = _answer(items, cl.CLAIM, "7")
    assert sources["status"] == cl.FROM_RUN
    assert "10 images of 5 patients from 2 sources (SrcA, SrcB)" in sources["answer"]
    assert sources["links"] == ["demo/tables/cohort_by_class_source.csv",
                                "demo/00_data_audit.html"]
    assert "10 images in, 9 analysed" in _answer(items, cl.CLAIM, "8")["answer"]
    assert "0 of 5 patient groups" in _answer(items, cl.CLAIM, "20")["answer"]
    # control 5 of 6, covid19 4 of 4 right: balanced accuracy 91.7%
    assert "best balanced accuracy exp1/covidnet 91.7 (" in _answer(items, cl.CLAIM, "29")["answer"]
    assert "abc1234" in _answer(items, cl.CLAIM, "43")["answer"]
    # tables this run lacks: answered 'not in this run', never invented
    assert _answer(items, cl.CLAIM, "31")["status"] == cl.NOT_RUN
    assert _answer(items, cl.CLAIM, "33")["status"] == cl.NOT_RUN
    assert _answer(items, cl.CLAIM, "3")["status"] == cl.AUTHORS
    for links in items["links"]:
        assert all((run / link).is_file() for link in links)

    md_path, html_path = cl.write_checklist(run)
    md = md_path.read_text()
    left = md.split("## CLAIM 2024: left to the authors")[1].split("## TRIPOD+AI")[0]
    assert "- 16. Who produced the labels" in left and "- 44. Funding" in left
    assert "- 17. Ethics approval" in md.split("## TRIPOD+AI: left to the authors")[1]
    assert "href='demo/tables/flow.csv'" in html_path.read_text()


def test_reviewer_reports_never_raise(tmp_path):
    (tmp_path / "study.json").write_text("{not json")
    section = cl.reviewer_reports_html(tmp_path)
    assert "could not be written" in section


@pytest.mark.notebook
def test_smoke_run_checklist_links_and_numbers(smoke_run):
    _, out = smoke_run
    index = (out / "index.html").read_text()
    assert "href='checklist.html'" in index and "arias/model_cards/" in index
    md, page = (out / "checklist.md").read_text(), (out / "checklist.html").read_text()
    items = cl.checklist(out)
    linked = [link for links in items["links"] for link in links]
    assert linked and all((out / link).is_file() for link in linked)
    assert all(f"href='{link}'" in page for link in set(linked))
    assert (items["status"] == cl.NOT_RUN).sum() == 0  # a full smoke run answers them all

    counts = pd.read_csv(out / "arias" / "tables" / "cohort_by_class_source.csv")
    total = counts[counts["source"] == "total"].iloc[0]
    assert (f"`arias`: {int(total['total'])} images of {int(total['patients'])} patients"
            in _answer(items, cl.CLAIM, "7")["answer"])
    plan = pd.read_csv(out / "arias" / "artifacts" / "split_plan.csv")
    assert (f"0 of {plan['group'].nunique()} patient groups"
            in _answer(items, cl.CLAIM, "20")["answer"])
    ci = pd.read_csv(out / "arias" / mc.CARDS_DIR / mc.CI_FILE)
    best = ci.sort_values("balanced_accuracy", ascending=False).iloc[0]
    assert f"{100 * best['balanced_accuracy']:.1f} (" in _answer(items, cl.CLAIM, "37")["answer"]
    verdicts = pd.read_csv(out / "arias" / "tables" / "shortcut_verdicts.csv")
    first = verdicts.iloc[0]
    assert (f"{first['question']}: {first['answer']} (gain {first['gain']:.3f})"
            in _answer(items, cl.CLAIM, "30")["answer"])
    for section in ("## CLAIM 2024: left to the authors", "## TRIPOD+AI: left to the authors"):
        assert section in md
    assert "3. Scientific and clinical background" in md


def test_html_renders_the_markdown_emphasis_and_code_of_the_texts():
    assert cl.inline_html("items marked *left to the authors*, by `cxrlib.report.checklist`") == \
        "items marked <i>left to the authors</i>, by <code>cxrlib.report.checklist</code>"
    # a lone star, stars inside words and markup in the text stay text
    assert cl.inline_html("2 * 3 and a*b <b>") == "2 * 3 and a*b &lt;b&gt;"
    page = cl.render_html(pd.DataFrame(columns=["guideline", "item", "asks", "status", "answer",
                                                 "links"]))
    assert "<i>left to the authors</i>" in page and "*left" not in page
