import numpy as np
import pandas as pd
import pytest

from cxrlib.data.splits import check_split_plan, fold_split, make_split_plan, without_severity


def _cohort(n_patients=40, per_patient=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = ["control", "pneumonia", "covid19"][p % 3]
        for k in range(rng.integers(1, per_patient + 1)):
            rows.append({"image_id": f"{p}_{k}", "patient_id": f"P{p}", "label": label})
    return pd.DataFrame(rows)


def test_no_patient_in_two_folds_and_every_image_once():
    df = _cohort()
    plan = make_split_plan(df, folds=5, repetitions=3, seed=7)
    check_split_plan(plan)
    assert len(plan) == 3 * len(df)
    for _, rep in plan.groupby("repetition"):
        assert rep.groupby("group")["fold"].nunique().max() == 1
        assert sorted(rep["image_id"]) == sorted(df["image_id"])
        assert set(rep["fold"]) == set(range(5))


def test_repetitions_differ_and_seed_reproduces():
    df = _cohort()
    a = make_split_plan(df, folds=4, repetitions=2, seed=1)
    b = make_split_plan(df, folds=4, repetitions=2, seed=1)
    pd.testing.assert_frame_equal(a, b)
    r0 = a[a.repetition == 0].set_index("image_id")["fold"]
    r1 = a[a.repetition == 1].set_index("image_id")["fold"]
    assert (r0 != r1.loc[r0.index]).any()


def test_stratification_keeps_class_mix():
    df = _cohort(n_patients=60, per_patient=1)
    plan = make_split_plan(df, folds=3, repetitions=1, seed=0).merge(df, on="image_id")
    share = pd.crosstab(plan["fold"], plan["label"], normalize="index")
    assert (share.max() - share.min()).max() < 0.1


def test_qc_patient_group_joins_duplicates_across_patients():
    df = _cohort(n_patients=30, per_patient=1)
    df["qc_patient_group"] = df["patient_id"]
    df.loc[df.index[:6], "qc_patient_group"] = "dup-group"  # same image under 6 patient ids
    plan = make_split_plan(df, folds=3, seed=0)
    folds = plan.set_index("image_id").loc[df["image_id"][:6], "fold"]
    assert folds.nunique() == 1


def test_leak_is_detected():
    plan = pd.DataFrame({"image_id": ["a", "b"], "group": ["P1", "P1"], "repetition": 0,
                         "fold": [0, 1]})
    with pytest.raises(ValueError, match="group 'P1' appears in 2 folds"):
        check_split_plan(plan)


def test_fold_split_validation_comes_from_training_folds():
    df = _cohort(n_patients=50, per_patient=2)
    plan = make_split_plan(df, folds=5, seed=0)
    parts = fold_split(plan, repetition=0, fold=2, val_fraction=0.2, seed=0)
    train, valid, test = (set(parts[k]) for k in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    assert train | valid | test == set(df["image_id"])
    assert test == set(plan[(plan.fold == 2)]["image_id"])
    groups = plan.set_index("image_id")["group"]
    assert not set(groups.loc[list(train)]) & set(groups.loc[list(valid)])


def test_bad_arguments():
    df = _cohort(n_patients=4, per_patient=1)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        make_split_plan(df, folds=1)
    with pytest.raises(ValueError, match="4 patient groups cannot fill 5 folds"):
        make_split_plan(df, folds=5)
    with pytest.raises(ValueError, match="cannot stratify on 'sex'"):
        make_split_plan(df, folds=2, stratify="sex")
    plan = make_split_plan(df, folds=2)
    with pytest.raises(ValueError, match="fold 3 not in repetition 0"):
        fold_split(plan, 0, 3)
    lone = plan.assign(group=plan["group"].where(plan["fold"] == 0, "the one outside"))
    with pytest.raises(ValueError, match="leaves 1 patient group"):
        fold_split(lone, 0, 0)
    assert len(fold_split(lone, 0, 0, val_fraction=0)["train"]) == (plan["fold"] == 1).sum()


def _severity_manifest():
    return pd.DataFrame({
        "image_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["covid19", "covid19", "covid19", "covid19", "control", "control"],
        "severity": ["mild", "mild", "severe", "normal_pcr_pos", None, None],
    })


def test_without_severity_drops_images_from_manifest_and_plan():
    plan = pd.DataFrame({"image_id": list("abcdef"), "group": list("abcdef"),
                         "repetition": 0, "fold": [0, 1, 0, 1, 0, 1]})
    manifest, kept_plan = without_severity(_severity_manifest(), plan)
    assert "d" not in set(manifest["image_id"]) and "d" not in set(kept_plan["image_id"])
    assert len(manifest) == len(kept_plan) == 5
    with pytest.raises(ValueError, match="unknown severity"):
        without_severity(_severity_manifest(), plan, "critical")
