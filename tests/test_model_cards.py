"""Model cards (cxrlib.report.model_cards): the patient bootstrap, a tiny hand-made run folder and
the session's smoke run (the ``smoke_run`` fixture of conftest.py)."""
import re

import numpy as np
import pandas as pd
import pytest

from cxrlib.report import model_cards as mc
from test_checklist import write_tiny_run


def test_bootstrap_accuracy_point_values_and_ci():
    labels = ["a", "a", "a", "b"]
    predicted = ["a", "a", "b", "b"]
    out = mc.bootstrap_accuracy(labels, predicted, ["p1", "p1", "p2", "p3"], n_boot=200)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["accuracy_ci_low"] <= out["accuracy"] <= out["accuracy_ci_high"]
    assert out["n"] == 4 and out["n_patients"] == 3
    perfect = mc.bootstrap_accuracy(labels, labels, ["p1", "p2", "p3", "p4"], n_boot=50)
    assert perfect["accuracy_ci_low"] == perfect["accuracy_ci_high"] == 1.0


def test_tiny_run_card(tmp_path):
    run = write_tiny_run(tmp_path / "run")
    written = mc.write_model_cards(run / "demo", n_boot=20)
    card = run / "demo" / "model_cards" / "covidnet_arias2020-fast.md"
    assert card in written and (run / "demo" / "model_cards" / mc.CI_FILE) in written
    text = card.read_text()
    assert "Research use only" in text
    assert "| exp1 " in text and "90.0 (" in text  # 9 of 10 right
    assert "Notebook 04 did not analyse this family's subgroups." in text
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (card.parent / link).is_file(), link
    # predictions gone (e.g. set aside after a failure): the stale cards go too
    (run / "demo" / "artifacts" / "predictions.parquet").unlink()
    assert mc.write_model_cards(run / "demo") == [] and not card.exists()


@pytest.mark.notebook
def test_smoke_run_cards(smoke_run):
    _, out = smoke_run
    index = (out / "index.html").read_text()
    for cohort in ("arias-noshortcut", "arias", "covidgr"):
        cdir = out / cohort
        preds = pd.read_parquet(cdir / "artifacts" / "predictions.parquet")
        ci = pd.read_csv(cdir / mc.CARDS_DIR / mc.CI_FILE)
        glob = pd.read_csv(cdir / "tables" / "cv_global.csv")
        for (model, method), part in preds.groupby(["model", "method"]):
            card = cdir / mc.CARDS_DIR / mc.card_name(model, method)
            assert card.is_file() and f"{cohort}/{mc.CARDS_DIR}/{card.name}" in index
            text = card.read_text()
            assert "Research use only" in text
            for link in re.findall(r"\]\(([^)]+)\)", text):
                assert (card.parent / link).is_file(), (card, link)
            row = ci[(ci["model"] == model) & (ci["method"] == method)].iloc[0]
            assert mc.fmt_ci(row["accuracy"], row["accuracy_ci_low"],
                             row["accuracy_ci_high"]) in text
            g = glob[(glob["model"] == model) & (glob["method"] == method)]
            if len(g):
                assert f"{g['auc_macro_mean'].iloc[0]:.3f}" in text  # the metric from the table
            assert np.isclose(row["accuracy"], (part.loc[part["experiment"] == row["experiment"],
                                                         "label"]
                                                == part.loc[part["experiment"] == row["experiment"],
                                                            "predicted"]).mean())
    arias = (out / "arias" / mc.CARDS_DIR / "covidnet_arias2020-fast.md").read_text()
    assert "## Shortcut verdicts" in arias and "labels predictable without the lungs" in arias
    paper = pd.read_csv(out / "arias" / "tables" / "cv_global_vs_paper.csv")
    assert str(paper.loc[paper["experiment"] == "exp1", "Acc (paper)"].iloc[0]) in arias
