import json
from pathlib import Path

import pandas as pd
import pytest

from cxrlib.data.manifest import (
    COLUMNS, ManifestError, load_manifest, resolve_data_root, validate_manifest, write_manifest,
)


def test_valid_manifest_round_trip(tiny_cohort, tmp_path):
    df, root = tiny_cohort
    csv = tmp_path / "manifests" / "tiny.csv"
    write_manifest(df, csv, data_root=root, meta={"note": "hand-made"})
    back = load_manifest(csv)
    assert list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(back) == len(df)
    assert back["age"].dtype == float and back.loc[0, "age"] == 30.0
    # empty strings become missing values, not the string ""
    assert back["lesion_mask_path"].isna().all()
    assert back.loc[back["label"] == "control", "severity"].isna().all()
    assert back.attrs["data_root"] == str(root.resolve())
    assert back.attrs["meta"]["note"] == "hand-made"
    # the sidecar stores the root relative to the CSV so they can move together
    assert json.loads((tmp_path / "manifests" / "tiny.meta.json").read_text())["data_root"] == ".."


def test_missing_required_column_is_named(tiny_cohort):
    df, root = tiny_cohort
    with pytest.raises(ManifestError, match=r"missing required column\(s\) \['label'\]"):
        validate_manifest(df.drop(columns="label"), data_root=root)


def test_misspelt_column_is_an_error(tiny_cohort):
    df, root = tiny_cohort
    with pytest.raises(ManifestError, match=r"column 'Sex'.*unknown column"):
        validate_manifest(df.rename(columns={"sex": "Sex"}), data_root=root)


def test_extra_columns_need_a_known_prefix(tiny_cohort):
    df, root = tiny_cohort
    ok = validate_manifest(df.assign(synth_rale=1, qc_flag="ok"), data_root=root)
    assert {"synth_rale", "qc_flag"} <= set(ok.columns)


def test_extra_columns_come_back_typed_from_csv(tiny_cohort, tmp_path):
    df, root = tiny_cohort
    n = len(df)
    df = df.assign(
        synth_rale=[str(i % 9) for i in range(n)],
        synth_fraction=["0.25"] * (n - 1) + [""],
        synth_devices=["True", "False"] * (n // 2),
        qc_reason=["ok"] * n,
    )
    csv = tmp_path / "typed.csv"
    write_manifest(df, csv, data_root=root)
    back = load_manifest(csv)
    assert back["synth_rale"].dtype == "int64"
    assert back["synth_rale"].sum() == sum(i % 9 for i in range(n))
    assert back["synth_fraction"].dtype == float and back["synth_fraction"].isna().sum() == 1
    assert back["synth_devices"].dtype == bool and back["synth_devices"].sum() == n // 2
    assert (back["qc_reason"] == "ok").all()


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("label", "viral", r"row 3, column 'label': unknown value 'viral'"),
        ("sex", "female", r"row 3, column 'sex'"),
        ("projection", "LL", r"row 3, column 'projection'"),
        ("severity", "critical", r"row 3, column 'severity'"),
        ("age", "fifty", r"row 3, column 'age'"),
        ("age", "150", r"row 3, column 'age'"),
        ("study_date", "15/01/2020", r"row 3, column 'study_date'"),
        ("patient_id", "", r"row 3, column 'patient_id': empty value"),
    ],
)
def test_bad_value_names_row_and_column(tiny_cohort, column, value, message):
    df, root = tiny_cohort
    df.loc[3, column] = value
    with pytest.raises(ManifestError, match=message):
        validate_manifest(df, data_root=root)


def test_duplicate_image_id(tiny_cohort):
    df, root = tiny_cohort
    df.loc[5, "image_id"] = df.loc[2, "image_id"]
    with pytest.raises(ManifestError,
                       match=r"row 5, column 'image_id': duplicate .*first seen in row 2"):
        validate_manifest(df, data_root=root)


def test_missing_image_and_mask_files(tiny_cohort):
    df, root = tiny_cohort
    (root / df.loc[7, "path"]).unlink()
    with pytest.raises(ManifestError, match=r"row 7, column 'path': file not found"):
        validate_manifest(df, data_root=root)
    df2 = df.drop(index=7).reset_index(drop=True)
    (root / df2.loc[0, "lung_mask_path"]).unlink()
    with pytest.raises(ManifestError, match=r"row 0, column 'lung_mask_path': file not found"):
        validate_manifest(df2, data_root=root)
    # without the file check the same table passes, nothing dropped
    assert len(validate_manifest(df2, check_files=False)) == len(df2)


def test_nothing_is_dropped_or_reordered(tiny_cohort):
    df, root = tiny_cohort
    out = validate_manifest(df.sample(frac=1, random_state=1), data_root=root)
    assert len(out) == len(df)
    assert set(out["image_id"]) == set(df["image_id"])


def test_load_errors(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.csv").write_text("image_id,path\n")
    with pytest.raises(ManifestError, match="missing required column"):
        load_manifest(tmp_path / "m.csv")


def test_data_root_resolution(tmp_path):
    csv = tmp_path / "a" / "m.csv"
    csv.parent.mkdir()
    csv.write_text("")
    assert resolve_data_root(csv) == csv.parent.resolve()
    assert resolve_data_root(csv, tmp_path / "x") == (tmp_path / "x").resolve()
    (tmp_path / "a" / "m.meta.json").write_text(json.dumps({"data_root": "../imgs"}))
    assert resolve_data_root(csv) == (tmp_path / "imgs").resolve()


def test_join_manifest_by_hand_and_its_errors():
    from cxrlib.data.manifest import image_info, join_manifest

    manifest = pd.DataFrame({"image_id": ["a", "b"], "patient_id": ["p1", "p2"],
                             "sex": ["F", "M"]})
    table = pd.DataFrame({"image_id": ["b", "a", "b"], "score": [1, 2, 3]})
    joined = join_manifest(table, manifest, ["patient_id"])
    assert list(joined["patient_id"]) == ["p2", "p1", "p2"] and list(joined["score"]) == [1, 2, 3]
    assert list(image_info(manifest, ["sex"]).loc[["b", "a"], "sex"]) == ["M", "F"]
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['age'\], needed with scores.csv"):
        join_manifest(table, manifest, ["age"], what="scores.csv")
    stray = pd.DataFrame({"image_id": ["a", "zz", "yy"]})
    with pytest.raises(ValueError, match=r"scores.csv: image 'zz' is not in the manifest \(2 "):
        join_manifest(stray, manifest, ["sex"], what="scores.csv")


def test_data_root_is_given_or_recorded_never_guessed(tmp_path):
    from cxrlib.data.manifest import data_root_of

    table = pd.DataFrame({"image_id": ["a"], "path": ["a.png"]})
    with pytest.raises(ValueError, match="no data root .*pass data_root= explicitly"):
        data_root_of(table)  # a table not loaded from a file: not the working directory
    assert data_root_of(table, tmp_path) == tmp_path
    table.attrs["data_root"] = str(tmp_path / "recorded")
    assert data_root_of(table) == tmp_path / "recorded"
    assert data_root_of(table, "/given") == Path("/given")  # an explicit root wins
