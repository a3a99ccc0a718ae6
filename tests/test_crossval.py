import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlib.train import crossval
from cxrlib.train.crossval import (
    experiment_grid, holdout_plan, read_runs, run_crossval, run_train_fraction_sweep,
)
from cxrlib.analysis.metrics import auc_by_train_fraction
from cxrlib.models.classifiers import load_classifier
from cxrlib.train.predictions import (
    append_predictions, artifact_stem, average_by_patient, load_embeddings, make_predictions,
    merge_predictions, read_predictions, validate_predictions,
)
from cxrlib.data.splits import make_split_plan
from cxrlib.profiles import get_profile
from cxrlib.train.training import get_recipe, load_images, predict

CLASSES = ["control", "pneumonia", "covid19"]
TINY = dict(image_size=32, width=0.125, epochs=1, batch_size=8, progress=False)


def write_tiny_pngs(root, n_patients=18, per_patient=2, size=32, seed=0):
    """Learnable 32-px PNGs (a bright quadrant tells the class) and their manifest/views tables."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True)
    manifest, views = [], []
    for p in range(n_patients):
        label = CLASSES[p % 3]
        for k in range(per_patient):
            iid = f"p{p:02d}_{k}"
            x = rng.random((size, size)) * 0.5
            if label == "pneumonia":
                x[:size // 2, :size // 2] += 0.5
            elif label == "covid19":
                x[size // 2:, size // 2:] += 0.5
            path = root / "img" / f"{iid}.png"
            Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(path)
            manifest.append({"image_id": iid, "patient_id": f"P{p:02d}", "label": label,
                             "study_date": "2020-04-01"})
            views.append({"image_id": iid, "view": "exp1", "path": str(path)})
    return pd.DataFrame(manifest), pd.DataFrame(views)


@pytest.fixture(scope="module")
def done_grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    manifest, views = write_tiny_pngs(root)
    plan = make_split_plan(manifest, folds=2, repetitions=1, seed=0)
    preds = run_crossval(views, manifest, plan, root / "artifacts", **TINY)
    return root / "artifacts", manifest, views, plan, preds


def test_crossval_writes_a_valid_predictions_table(done_grid):
    artifacts, manifest, _, plan, preds = done_grid
    validate_predictions(preds)
    assert len(preds) == len(manifest)  # one out-of-fold row per image
    assert sorted(preds["image_id"]) == sorted(manifest["image_id"])
    assert list(preds.columns[:7]) == ["image_id", "repetition", "fold", "experiment", "model",
                                       "method", "label"]
    assert {"p_control", "p_pneumonia", "p_covid19", "predicted"} <= set(preds.columns)
    fold_of = plan.set_index("image_id")["fold"]
    assert (preds["fold"].to_numpy() == fold_of.loc[preds["image_id"]].to_numpy()).all()
    truth = manifest.set_index("image_id")["label"]
    assert (preds["label"].to_numpy() == truth.loc[preds["image_id"]].to_numpy()).all()
    assert (preds[["experiment", "model", "method"]].drop_duplicates().to_numpy()
            == [["exp1", "covidnet", "arias2020"]]).all()
    pd.testing.assert_frame_equal(read_predictions(artifacts / "predictions.parquet"), preds)


def test_no_patient_appears_in_two_folds(done_grid):
    _, manifest, _, plan, preds = done_grid
    with_patient = preds.merge(manifest[["image_id", "patient_id"]], on="image_id")
    assert with_patient.groupby(["repetition", "patient_id"])["fold"].nunique().max() == 1
    assert plan.groupby(["repetition", "group"])["fold"].nunique().max() == 1


def test_fold_artifacts_embeddings_and_checkpoints(done_grid):
    artifacts, manifest, views, plan, preds = done_grid
    for fold in (0, 1):
        stem = artifact_stem("exp1", "covidnet", "arias2020", 0, fold)
        table, emb = load_embeddings(artifacts / "embeddings" / f"{stem}.npz")
        assert emb.shape == (len(manifest), 256) and emb.dtype == np.float32
        test_ids = set(plan.loc[plan["fold"] == fold, "image_id"])
        assert set(table.loc[table["split"] == "test", "image_id"]) == test_ids
        assert not test_ids & set(table.loc[table["split"] != "test", "image_id"])
        assert set(table["split"]) == {"train", "valid", "test"}
        # the checkpoint reproduces the stored out-of-fold probabilities
        model = load_classifier(artifacts / "checkpoints" / f"{stem}.pth")
        assert model.classes == CLASSES
        rows = preds[preds["fold"] == fold]
        paths = views.set_index("image_id").loc[rows["image_id"], "path"]
        probs, _ = predict(model, load_images(list(paths), 32))
        np.testing.assert_allclose(probs, rows[["p_control", "p_pneumonia", "p_covid19"]],
                                   atol=1e-5)
    runs = read_runs(artifacts)
    assert sorted(runs["fold"]) == [0, 1] and (runs["n_valid"] > 0).all()
    assert (runs["n_train"] + runs["n_valid"] + runs["n_test"] == len(manifest)).all()
    assert runs["init"].str.contains("trained from scratch").all()
    assert (artifacts / runs["log"].iloc[0]).is_file()


def test_second_call_skips_done_folds_and_redoes_missing_ones(done_grid, monkeypatch):
    artifacts, manifest, views, plan, preds = done_grid
    calls = []
    real = crossval.train_classifier
    monkeypatch.setattr(crossval, "train_classifier",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    again = run_crossval(views, manifest, plan, artifacts, **TINY)
    assert calls == []
    pd.testing.assert_frame_equal(again, preds)
    # lose fold 1's rows: only fold 1 is trained again, and no row is duplicated
    table = read_predictions(artifacts / "predictions.parquet")
    table[table["fold"] == 0].to_parquet(artifacts / "predictions.parquet", index=False)
    redone = run_crossval(views, manifest, plan, artifacts, **TINY)
    assert calls == [1]
    assert len(redone) == len(manifest) and not redone.duplicated(["image_id", "repetition"]).any()


def test_crossval_refuses_a_missing_view(done_grid):
    artifacts, manifest, views, plan, _ = done_grid
    with pytest.raises(ValueError, match="needs view 'exp3'"):
        run_crossval(views, manifest, plan, artifacts, experiments=["exp3"], **TINY)
    with pytest.raises(ValueError, match="lacks column 'path'"):
        run_crossval(views.drop(columns="path"), manifest, plan, artifacts, **TINY)


def test_train_fraction_sweep_is_a_holdout_per_fraction(done_grid, tmp_path):
    _, manifest, views, _, _ = done_grid
    rel = views.assign(path=views["path"].map(lambda p: p.split("/img/")[1]))
    root = views["path"].iloc[0].split("/img/")[0] + "/img"
    preds = run_train_fraction_sweep(rel, manifest, tmp_path, fractions=(0.5,), data_root=root,
                                     **TINY)
    assert set(preds["experiment"]) == {"exp1@train50"} and set(preds["fold"]) == {0}
    plan = pd.read_csv(tmp_path / "split_plan_train50.csv")
    assert plan.loc[plan["fold"] == 0, "group"].nunique() == 9  # half of 18 patients tested
    assert sorted(preds["image_id"]) == sorted(plan.loc[plan["fold"] == 0, "image_id"])
    out = auc_by_train_fraction(preds, "covid19")
    assert out["train_fraction"].tolist() == [0.5] and 0 <= out["auc"].iloc[0] <= 1


def test_experiment_grid():
    grid = experiment_grid({"exp1@train50": "exp1", "exp3": "exp3"},
                           ["covidnet", ("resnet50", "soares2020")])
    assert [(g.experiment, g.view, g.model, g.method) for g in grid] == [
        ("exp1@train50", "exp1", "covidnet", "arias2020"),
        ("exp1@train50", "exp1", "resnet50", "soares2020"),
        ("exp3", "exp3", "covidnet", "arias2020"),
        ("exp3", "exp3", "resnet50", "soares2020")]
    faster = get_recipe("arias2020").with_overrides(name="arias2020-fast", lr=1e-3)
    custom = experiment_grid(["exp1"], [("covidnet", faster)])[0]
    assert custom.method == "arias2020-fast" and custom.recipe.lr == 1e-3
    with pytest.raises(ValueError, match="unknown training recipe"):
        experiment_grid(["exp1"], [("covidnet", "sgd")])
    with pytest.raises(ValueError, match="twice"):
        experiment_grid(["exp1"], ["covidnet", ("covidnet", "arias2020")])
    with pytest.raises(ValueError, match="may only contain"):
        experiment_grid(["exp 1"], ["covidnet"])


def test_holdout_plan_is_80_20_by_patient():
    rows = [{"image_id": f"{p}_{k}", "patient_id": f"P{p}", "label": CLASSES[p % 3]}
            for p in range(60) for k in range(1 + p % 2)]
    manifest = pd.DataFrame(rows)
    plan = holdout_plan(manifest, test_fraction=0.2, seed=0)
    assert set(plan["fold"]) == {0, -1}
    assert plan.groupby("group")["fold"].nunique().max() == 1
    test_patients = plan.loc[plan["fold"] == 0, "group"].nunique()
    assert test_patients == 12  # 20% of 60 patients
    per_class = (manifest.merge(plan, on="image_id").query("fold == 0")
                 .groupby("label")["group"].nunique())
    assert per_class.to_dict() == {"control": 4, "covid19": 4, "pneumonia": 4}


def _rows(ids, probs, fold=0, labels=None):
    labels = labels or ["control"] * len(ids)
    return make_predictions(ids, labels, np.array(probs), ["control", "covid19"], experiment="exp1",
                            model="covidnet", method="arias2020", repetition=0, fold=fold)


def test_predictions_table_rejects_bad_rows():
    good = _rows(["a", "b"], [[0.7, 0.3], [0.2, 0.8]])
    assert good["predicted"].tolist() == ["control", "covid19"]
    bad = good.copy()
    bad.loc[1, "p_control"] = 0.5
    with pytest.raises(ValueError, match="row 1: class probabilities"):
        validate_predictions(bad)
    bad = good.copy()
    bad.loc[0, "predicted"] = "covid19"
    with pytest.raises(ValueError, match="row 0: predicted 'covid19' is not the most probable"):
        validate_predictions(bad)
    with pytest.raises(ValueError, match="duplicate key"):
        validate_predictions(pd.concat([good, good]))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['fold'\]"):
        validate_predictions(good.drop(columns="fold"))


def test_append_merges_by_key_without_duplicates(tmp_path):
    path = tmp_path / "predictions.parquet"
    append_predictions(path, _rows(["a", "b"], [[0.7, 0.3], [0.6, 0.4]]))
    merged = append_predictions(path, _rows(["b", "c"], [[0.1, 0.9], [0.5, 0.5]], fold=1))
    assert merged["image_id"].tolist() == ["a", "b", "c"]
    assert merged.set_index("image_id").loc["b", "p_covid19"] == pytest.approx(0.9)
    pd.testing.assert_frame_equal(read_predictions(path), merged)
    with pytest.raises(ValueError, match="class columns differ"):
        merge_predictions(merged, make_predictions(["z"], ["control"], [[0.2, 0.3, 0.5]], CLASSES,
                                                   experiment="exp1", model="covidnet",
                                                   method="arias2020", repetition=0, fold=0))


def test_average_by_patient_same_day():
    pred = _rows(["a1", "a2", "a3", "b1"], [[0.2, 0.8], [0.6, 0.4], [0.9, 0.1], [0.3, 0.7]],
                 labels=["covid19"] * 3 + ["control"])
    manifest = pd.DataFrame({"image_id": ["a1", "a2", "a3", "b1"],
                             "patient_id": ["A", "A", "A", "B"],
                             "study_date": ["2020-03-01", "2020-03-01", "2020-03-09", None]})
    daily = average_by_patient(pred, manifest).set_index("unit_id")
    assert sorted(daily.index) == ["A|2020-03-01", "A|2020-03-09", "B|"]
    assert daily.loc["A|2020-03-01", "p_covid19"] == pytest.approx(0.6)
    assert daily.loc["A|2020-03-01", "n_images"] == 2
    assert daily.loc["A|2020-03-01", "predicted"] == "covid19"
    whole = average_by_patient(pred, manifest, same_day=False).set_index("unit_id")
    assert whole.loc["A", "p_covid19"] == pytest.approx((0.8 + 0.4 + 0.1) / 3)
    assert whole.loc["A", "predicted"] == "control"


def test_with_checkpoints_keeps_only_cross_validated_folds(tmp_path):
    from cxrlib.train.predictions import CROSSVAL_RUNS_FILE, with_checkpoints
    from cxrlib.run_folder import upsert_row

    preds = pd.DataFrame({
        "image_id": ["a", "b", "c", "d"], "repetition": 0, "fold": [0, 1, 0, 0],
        "experiment": ["exp1", "exp1", "sdnet", "sdnet"],
        "model": ["covidnet", "covidnet", "covidnet", "covid-sdnet"], "method": "m"})
    with pytest.raises(FileNotFoundError, match="notebook 03"):
        with_checkpoints(preds, tmp_path)
    for exp, fold in (("exp1", 0), ("exp1", 1), ("sdnet", 0), ("exp1", 0)):  # last one replaces
        upsert_row(tmp_path / CROSSVAL_RUNS_FILE,
                   {"experiment": exp, "model": "covidnet", "method": "m",
                    "repetition": 0, "fold": fold, "n_train": fold + 10},
                   ("experiment", "model", "method", "repetition", "fold"))
    assert len(pd.read_csv(tmp_path / CROSSVAL_RUNS_FILE)) == 3
    assert list(with_checkpoints(preds, tmp_path)["image_id"]) == ["a", "b", "c"]


def test_classifier_setup_per_profile():
    smoke, paper = (crossval.classifier_setup(get_profile(n)) for n in ("smoke", "paper"))
    assert smoke.covidnet[1].name == "arias2020-fast" and smoke.covidnet[1].lr == 1e-3
    assert smoke.overrides == {"epochs": 1, "batch_size": 16} and smoke.folds == [0, 1]
    assert paper.covidnet[1].name == "arias2020" and paper.overrides == {}
    assert paper.binary[0] == "resnet50" and paper.binary[1].name == "tabik2020"
    assert paper.folds == [0, 1, 2, 3, 4]
    # no branch on the name: a renamed copy of a profile trains the same way
    renamed = get_profile("paper").with_overrides(name="cluster")
    assert crossval.classifier_setup(renamed) == paper
    vgg = crossval.classifier_setup(get_profile("smoke", {"cls_binary_model": "vgg16"}))
    assert vgg.binary[1].name == "civit2020"  # the model's own paper's recipe
