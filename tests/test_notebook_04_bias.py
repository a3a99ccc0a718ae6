"""Notebook 04 (bias and shortcut analysis) in the smoke run of the whole study: its tables
recomputed from what they were computed from (notebook 03's out-of-fold predictions and the
manifest; the predictions of the models notebook 04 trains; the masked views it writes), and the
answers its reading states."""
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score

from cxrlib.analysis import bias, shortcuts
from cxrlib.train.crossval import classifier_setup
from cxrlib.data.manifest import load_manifest
from cxrlib.train.predictions import MODEL_KEY, read_predictions
from cxrlib.profiles import get_profile
from cxrlib.train.training import load_images

pytestmark = pytest.mark.notebook

POSITIVE = "covid19"
BY = [*MODEL_KEY, "repetition"]
#: the analysed cohort and, for the probes, the twin cohort (arias without the shortcut)
PROBE_COHORTS = {"given": "arias", "twin": "arias-noshortcut"}


def _table(out, name, cohort="arias"):
    path = out / cohort / "tables" / f"{name}.csv"
    assert path.is_file(), f"notebook 04 did not write {path}"
    return pd.read_csv(path)


def _settings(out):
    """(profile, seed) the smoke run was made with."""
    settings = json.loads((out / "study.json").read_text())["settings"]
    return get_profile(settings["profile"]), int(settings["seed"])


def _manifest(out, cohort="arias"):
    path = json.loads((out / "study.json").read_text())["cohorts"][cohort]["manifest"]
    return load_manifest(path, check_files=False)


def _predictions(out):
    """Notebook 03's out-of-fold predictions of the study's COVID-Net, as notebook 04 reads them,
    with the manifest's factors (``age_band`` from ``age``; missing values ``"unknown"``)."""
    profile, _ = _settings(out)
    model, recipe = classifier_setup(profile).covidnet
    preds = read_predictions(out / "arias" / "artifacts" / "predictions.parquet")
    preds = preds[(preds["model"] == model) & (preds["method"] == recipe.name)
                  & ~preds["experiment"].str.contains("@")]
    info = _manifest(out).drop_duplicates("image_id").set_index("image_id")
    factors = info[["patient_id", "projection", "sensor", "sex", "source", "age"]]
    table = preds.merge(factors, left_on="image_id", right_index=True, how="left",
                        validate="many_to_one")
    age = pd.to_numeric(table["age"], errors="coerce")
    table["age_band"] = pd.cut(age, [0, 40, 60, 80, np.inf], right=False,
                               labels=["<40", "40-59", "60-79", "80+"]).astype(object)
    for factor in bias.FACTORS:
        table[factor] = table[factor].astype(object).where(table[factor].notna(), "unknown")
        table[factor] = table[factor].astype(str)
    table["correct"] = table["label"] == table["predicted"]
    return preds, table


def _class_rates(preds, keys):
    """Per-class PPV, recall and F1 (percent, 2 decimals) and support of each group, by
    scikit-learn (NaN where a rate is undefined)."""
    classes = [c[2:] for c in preds.columns if c.startswith("p_")]
    rows = []
    for key, part in preds.groupby(keys):
        ppv, recall, f1, support = precision_recall_fscore_support(
            part["label"], part["predicted"], labels=classes, zero_division=np.nan)
        for j, cls in enumerate(classes):
            rows.append({**dict(zip(keys, key)), "class": cls, "support": support[j],
                         "ppv": ppv[j], "recall": recall[j], "f1": f1[j]})
    return pd.DataFrame(rows)


def _assert_same(table, expected, keys, rtol=1e-9):
    got = table.set_index(keys)[list(expected.columns)].sort_index()
    expected = expected.sort_index()
    assert got.index.equals(expected.index), (got.index, expected.index)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=False,
                                  rtol=rtol, atol=1e-12)


def _chi2_p(counts):
    """p-value of Pearson's chi-square test of independence of a contingency table, by hand
    (no continuity correction)."""
    counts = np.asarray(counts, dtype=float)
    expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / counts.sum()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = (counts.shape[0] - 1) * (counts.shape[1] - 1)
    return chi2, dof, stats.chi2.sf(chi2, dof)


def test_only_arias_is_analysed(smoke_run):
    _, out = smoke_run
    assert (out / "arias" / "04_bias_analysis.ipynb").is_file()
    assert not (out / "covidgr" / "tables" / "shortcut_probes.csv").exists()


def test_projection_table(smoke_run):
    _, out = smoke_run
    table = _table(out, "bias_projection")
    assert set(table["analysis"]) == {"stratified out-of-fold", "retrained per projection"}
    stratified = table[table["analysis"] == "stratified out-of-fold"]
    assert set(stratified["experiment"]) == {"exp1", "exp2", "exp3"}
    assert set(stratified["projection"]) <= {"PA", "AP"}
    assert table.loc[table["experiment"] == "exp1", "f1_paper"].notna().all()
    rates = ["support", "ppv", "recall", "f1"]
    keys = [*MODEL_KEY, "projection", "class"]

    # stratified: the rates of each projection's images, repetition by repetition, then averaged
    _, preds = _predictions(out)
    per_rep = _class_rates(preds, [*MODEL_KEY, "projection", "repetition"])
    expected = per_rep.groupby(keys)[rates].mean()
    expected[["ppv", "recall", "f1"]] = (expected[["ppv", "recall", "f1"]] * 100).round(2)
    _assert_same(stratified, expected, keys)

    # retrained: the predictions of the COVID-Net trained on each projection alone
    retrained = table[table["analysis"] == "retrained per projection"]
    assert set(retrained["experiment"]) <= {"exp1@PA", "exp1@AP"} and len(retrained)
    for projection, rows in retrained.groupby("projection"):
        own = read_predictions(out / "arias" / "artifacts" / "bias_projection" / projection
                               / "predictions.parquet")
        expected = _class_rates(own, list(MODEL_KEY)).assign(projection=projection)
        expected = expected.set_index(keys)[rates]
        expected[["ppv", "recall", "f1"]] = (expected[["ppv", "recall", "f1"]] * 100).round(2)
        _assert_same(rows, expected, keys)


def test_error_distribution_recomputed(smoke_run):
    """Test mix, hits and errors per level of each factor, and the chi-square test of "errors
    follow the test mix", recomputed from the predictions and the manifest."""
    _, out = smoke_run
    table = _table(out, "bias_error_distribution")
    table["level"] = table["level"].astype(str)
    assert set(table["factor"]) == {"projection", "sensor", "sex", "source", "age_band"}
    _, preds = _predictions(out)
    rows = []
    for key, part in preds.groupby(BY):
        for factor in bias.FACTORS:
            for cls, block in part.groupby("label"):
                counts = pd.crosstab(block[factor], block["correct"]).reindex(
                    columns=[True, False], fill_value=0)
                hits, errors = counts[True], counts[False]
                p = np.nan
                if hits.sum() and errors.sum() and len(counts) > 1:
                    _, _, p = _chi2_p(np.vstack([hits, errors]))
                for level in counts.index:
                    n_test = hits[level] + errors[level]
                    rows.append({**dict(zip(BY, key)), "factor": factor, "class": cls,
                                 "level": str(level), "n_test": n_test, "n_correct": hits[level],
                                 "n_error": errors[level],
                                 "test_share": n_test / len(block),
                                 "correct_share": hits[level] / hits.sum() if hits.sum()
                                 else np.nan,
                                 "error_share": errors[level] / errors.sum() if errors.sum()
                                 else np.nan,
                                 "p_value": p})
    keys = [*BY, "factor", "class", "level"]
    _assert_same(table, pd.DataFrame(rows).set_index(keys), keys)

    # the reading's count of blocks that reject at 5%
    blocks = table.drop_duplicates([*BY, "factor", "class"]).dropna(subset=["p_value"])
    [reading] = _markdown_of(out, "bias.error_distribution(")
    assert [int(n) for n in re.findall(r"\d+", reading)[:2]] == [
        int((blocks["p_value"] < 0.05).sum()), len(blocks)]


def test_subgroups_recomputed(smoke_run):
    """Subgroup AUC, sensitivity and specificity of COVID-19: the point estimates recomputed with
    scikit-learn, the largest gaps from them, and the patient-bootstrap CIs reproduced by the
    same function with the same seed and resamples on the same rows."""
    _, out = smoke_run
    profile, seed = _settings(out)
    table = _table(out, "bias_subgroups")
    table["level"] = table["level"].astype(str)
    assert set(table["metric"]) == {"auc", "sensitivity", "specificity"}
    assert "largest gap" in set(table["level"])
    raw, preds = _predictions(out)
    points, gaps = [], []
    for key, part in preds.groupby(BY):
        for factor in bias.FACTORS:
            values = {}
            for level, sub in part.groupby(factor):
                positive = (sub["label"] == POSITIVE).to_numpy()
                called = (sub["predicted"] == POSITIVE).to_numpy()
                values[level] = {
                    "auc": roc_auc_score(positive, sub[f"p_{POSITIVE}"])
                    if 0 < positive.sum() < len(sub) else np.nan,
                    "sensitivity": called[positive].mean() if positive.any() else np.nan,
                    "specificity": (~called[~positive]).mean() if (~positive).any() else np.nan}
                for metric, value in values[level].items():
                    points.append({**dict(zip(BY, key)), "factor": factor, "level": str(level),
                                   "metric": metric, "value": value, "n": len(sub),
                                   "n_patients": sub["patient_id"].nunique()})
            sizes = part[factor].value_counts()
            for metric in ("auc", "sensitivity", "specificity"):
                ok = {lv: v[metric] for lv, v in values.items()
                      if sizes[lv] >= 10 and not np.isnan(v[metric])}
                if len(ok) < 2:
                    continue
                best, worst = max(ok, key=ok.get), min(ok, key=ok.get)
                gaps.append({**dict(zip(BY, key)), "factor": factor, "metric": metric,
                             "value": ok[best] - ok[worst],
                             "n": int(sizes[list(ok)].sum())})
    keys = [*BY, "factor", "level", "metric"]
    levels = table[table["level"] != "largest gap"]
    _assert_same(levels, pd.DataFrame(points).set_index(keys), keys)
    gap_keys = [*BY, "factor", "metric"]
    _assert_same(table[table["level"] == "largest gap"], pd.DataFrame(gaps).set_index(gap_keys),
                 gap_keys)
    # the CIs: the same bootstrap (function, seed, resamples) on the same rows gives them again
    again = bias.subgroup_metrics(raw, _manifest(out), POSITIVE, n_boot=profile.bootstrap,
                                  seed=seed)
    again["level"] = again["level"].astype(str)
    _assert_same(table, again.set_index(keys)[["ci_low", "ci_high"]], keys)
    assert (out / "arias" / "figures" / "bias_subgroup_auc.png").is_file()

    # seed 003's tests of the errors against age (Welch) and sex (chi-square)
    age_sex = _table(out, "bias_error_age_sex")
    rows = []
    for key, part in preds.groupby(BY):
        age = pd.to_numeric(part["age"], errors="coerce")
        errors, hits = age[~part["correct"]].dropna(), age[part["correct"]].dropna()
        if len(errors) >= 2 and len(hits) >= 2:
            test = stats.ttest_ind(errors, hits, equal_var=False)
            rows.append({**dict(zip(BY, key)), "test": "age", "statistic": test.statistic,
                         "p_value": test.pvalue, "effect": errors.mean() - hits.mean(),
                         "n": len(errors) + len(hits)})
        known = part[part["sex"].isin(["F", "M"])]
        counts = pd.crosstab(known["sex"], known["correct"]).reindex(
            index=["F", "M"], columns=[True, False], fill_value=0)
        if (counts.sum(axis=1) > 0).all() and (counts.sum(axis=0) > 0).all():
            chi2, _, p = _chi2_p(counts)
            rate = counts[False] / counts.sum(axis=1)
            rows.append({**dict(zip(BY, key)), "test": "sex", "statistic": chi2, "p_value": p,
                         "effect": rate["F"] - rate["M"], "n": int(counts.to_numpy().sum())})
    assert len(rows)
    _assert_same(age_sex, pd.DataFrame(rows).set_index([*BY, "test"]), [*BY, "test"])


def _markdown_of(out, code, cohort="arias"):
    """The Markdown outputs of the one code cell of notebook 04 whose source contains ``code``
    (found by what the cell runs, not by what it prints)."""
    nb = json.loads((out / cohort / "04_bias_analysis.ipynb").read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code" and code in "".join(c["source"])]
    assert len(cells) == 1, code
    return ["".join(o["data"]["text/markdown"]) for o in cells[0].get("outputs", [])
            if "text/markdown" in o.get("data", {})]


def _views(out, name):
    """Notebook 04's masked views of one cohort, paths stored relative to their folder."""
    folder = out / "arias" / "artifacts" / "shortcut_views" / name
    views = pd.read_csv(folder / "views.csv", dtype={"image_id": str})
    assert not any(Path(p).is_absolute() for p in views["path"])  # the run folder can move
    return views.assign(path=[str(folder / p) for p in views["path"]])


def test_probes_recomputed_on_given_and_twin_cohorts(smoke_run):
    """The logistic probes run again on the masked views notebook 04 saved, the COVID-Net probe
    scored again from its saved predictions, and the verdicts drawn again from the probes."""
    _, out = smoke_run
    profile, seed = _settings(out)
    settings = shortcuts.probe_settings(profile)
    probes = _table(out, "shortcut_probes")
    assert dict(probes.groupby("cohort")["synth_shortcut"].first()) == {"given": 1.0, "twin": 0.0}
    logistic = probes[probes["model"] == "logistic"]
    assert set(zip(logistic["target"], logistic["input"])) == \
        {(t, v) for t in ("label", "source") for v in shortcuts.MASKED_VIEWS}
    assert (probes["model"] == "covidnet").sum() == 2  # lungs-removed control, both cohorts
    numbers = ["n", "n_classes", "balanced_accuracy", "ci_low", "ci_high", "baseline", "gain",
               "gain_ci_low", "gain_ci_high"]
    keys = ["target", "input", "model"]
    for name, cohort in PROBE_COHORTS.items():
        manifest = _manifest(out, cohort)
        mine = probes[probes["cohort"] == name]
        again = shortcuts.run_probes(_views(out, name), manifest, settings, seed=seed)
        _assert_same(mine[mine["model"] == "logistic"], again.set_index(keys)[numbers], keys)
        # the COVID-Net trained on the lungs-removed view: its saved test predictions
        cnn = read_predictions(out / "arias" / "artifacts" / "shortcuts" / name
                               / "predictions.parquet")
        row = mine[mine["model"] == "covidnet"].iloc[0]
        assert row["n"] == len(cnn)
        assert row["balanced_accuracy"] == pytest.approx(
            balanced_accuracy_score(cnn["label"], cnn["predicted"]))
        patients = manifest.set_index("image_id")["patient_id"]
        ci = shortcuts.balanced_accuracy_ci(cnn["label"], cnn["predicted"],
                                            cnn["image_id"].map(patients).astype(str),
                                            settings.n_boot, seed=seed)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci["ci_low"]),
                                                   pytest.approx(ci["ci_high"]))
        assert row["gain_ci_low"] == pytest.approx(ci["ci_low"] - 1 / row["n_classes"])

    # the verdicts: "yes" when the lower CI bound of the gain exceeds the fixed margin
    verdicts = _table(out, "shortcut_verdicts")
    assert set(verdicts["question"]) == set(shortcuts.QUESTIONS)
    assert len(verdicts) == 2 * len(shortcuts.QUESTIONS)
    for row in verdicts.itertuples():
        target, view = shortcuts.QUESTIONS[row.question]
        probe = logistic[(logistic["cohort"] == row.cohort) & (logistic["target"] == target)
                         & (logistic["input"] == view)].iloc[0]
        assert row.gain_ci_low == pytest.approx(probe["gain_ci_low"])
        assert row.answer == ("yes" if probe["gain_ci_low"] > shortcuts.VERDICT_MARGIN else "no")

    # the reading states each cohort's answers, whether each cohort's answers all match what was
    # planted (yes to every question where the knob is 1, no where it is 0) and whether the two
    # cohorts differ on every question
    answers = verdicts.pivot(index="question", columns="cohort", values="answer").sort_index()
    knob = verdicts.groupby("cohort")["synth_shortcut"].first()
    truth = {c: "yes" if knob[c] >= 0.5 else "no" for c in ("given", "twin")}
    match = {c: bool((answers[c] == truth[c]).all()) for c in ("given", "twin")}
    expected = [a for _, row in answers.iterrows() for a in row[["given", "twin"]]]
    expected += ["yes" if match[c] else "no" for c in ("given", "twin")]
    expected += ["yes" if (answers["given"] != answers["twin"]).all() else "no"]
    [reading] = _markdown_of(out, "shortcuts.verdicts_against_truth(")
    assert re.findall(r"\*\*(yes|no)\*\*", reading) == expected


def test_external_validation_recomputed(smoke_run):
    """Seed 003's transfer to a held-out source, run again from the full images notebook 04 saved
    (the same features, probe and seed)."""
    _, out = smoke_run
    profile, seed = _settings(out)
    settings = shortcuts.probe_settings(profile)
    table = _table(out, "external_validation")
    assert set(table["scenario"]) == {"hard", "soft 10%", "soft 40%"}
    hard = table[table["scenario"] == "hard"]
    soft = table[table["scenario"] == "soft 40%"]
    # soft transfer moves patients of the held-out source into training
    assert (soft["n_train"].to_numpy() > hard["n_train"].to_numpy()).all()
    columns = ["share", "n_train", "n_internal", "n_external", "auc_internal", "auc_external",
               "auc_drop"]
    for name, cohort in PROBE_COHORTS.items():
        manifest = _manifest(out, cohort)
        full = _views(out, name).query("view == 'full'").set_index("image_id")
        features = shortcuts.image_features(load_images(
            list(full.loc[manifest["image_id"].astype(str), "path"]), settings.image_size))
        again = shortcuts.external_validation(features, manifest, settings.soft_shares, seed=seed)
        assert len(again)
        _assert_same(table[table["cohort"] == name],
                     again.set_index(["held_out", "scenario"])[columns], ["held_out", "scenario"])
    # the reading's hard-transfer AUCs
    [reading] = _markdown_of(out, 'run.save_table(external, "external_validation")')
    means = table[table["scenario"] == "hard"].groupby("cohort")[["auc_internal", "auc_external"]]
    stated = re.findall(r"\d\.\d\d", reading)
    assert stated == [f"{v:.2f}" for _, r in means.mean().iterrows() for v in r]
