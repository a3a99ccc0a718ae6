"""The synthetic cohort generator: determinism, masks, RALE scoring, presets, shortcut, errors."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi
from scipy.stats import chi2_contingency, spearmanr

from cxrlib.data.manifest import COLUMNS, load_manifest, read_sidecar
from cxrlib.profiles import get_profile
from cxrlib.data.synthetic import (
    COHORTS, PRESETS, cohort_spec, default_cohort, generate_cohort, lung_parts, rale_score,
    render_case, sample_cases, severity_from_rale, shortcut_twin,
)
from cxrlib.data.synthetic.cohort import cell_counts
from cxrlib.data.synthetic.anatomy import keep_two_lungs
from cxrlib.data.synthetic.disease import split_column
from cxrlib.data.synthetic.frame import PixelFrame, upsample2
from cxrlib.data.synthetic.presets import ARIAS_SOURCES

SIZE = 64


def _digest(folder) -> dict:
    """sha1 of every file under ``folder`` (relative path -> hex)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _two_lungs():
    """20x30 image: right lung rows 4-13 x cols 2-9 (80 px), left lung rows 4-13 x cols 16-25
    (100 px); the lungs split at column 12, the middle of the empty run 10-15."""
    lung = np.zeros((20, 30), bool)
    lung[4:14, 2:10] = True
    lung[4:14, 16:26] = True
    return lung


@pytest.fixture(scope="module")
def arias_cohort(tmp_path_factory):
    """30 images of the arias preset at 64 px, shortcut 0 (every style, 8- and 16-bit)."""
    out = tmp_path_factory.mktemp("arias")
    df = generate_cohort(out, preset="arias", n_images=30, size=SIZE, seed=3, shortcut=0.0,
                         progress=False)
    return df, out


@pytest.fixture(scope="module")
def covid_renders():
    """Rendered COVID-19 cases of every severity (the covidgr preset), at 80 px."""
    cases = sample_cases("covidgr", 60, seed=1, shortcut=1.0)
    cases = cases[cases["label"] == "covid19"].head(24)
    return [(row, render_case(row, 80, seed=1)) for _, row in cases.iterrows()]


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kw = dict(preset="covidgr", n_images=6, size=SIZE, progress=False)
    generate_cohort(tmp_path / "a", seed=5, **kw)
    generate_cohort(tmp_path / "b", seed=5, **kw)
    generate_cohort(tmp_path / "c", seed=6, **kw)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    assert a == b
    assert len(a) == 3 * 6 + 2  # image + two masks per case, manifest + sidecar
    assert a["images/covidgr_000000.png"] != c["images/covidgr_000000.png"]


def test_parallel_generation_gives_the_same_bytes(tmp_path):
    kw = dict(preset="arias", n_images=5, size=SIZE, seed=2, progress=False)
    generate_cohort(tmp_path / "one", n_jobs=1, **kw)
    generate_cohort(tmp_path / "two", n_jobs=2, **kw)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_render_case_does_not_depend_on_the_cohort_around_it():
    small = sample_cases("arias", 20, seed=4)
    row = small.iloc[7]
    again = render_case(row.to_dict(), SIZE, seed=4)
    first = render_case(row, SIZE, seed=4)
    assert np.array_equal(first["image"], again["image"])
    assert np.array_equal(first["lung_mask"], again["lung_mask"])


# ------------------------------------------------------------------------------------------
# files and manifest
# ------------------------------------------------------------------------------------------

def test_manifest_validates_and_paths_are_relative(arias_cohort):
    df, out = arias_cohort
    back = load_manifest(out / "manifest.csv")
    assert list(back.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert len(back) == len(df) == 30
    extra = [c for c in back.columns if c not in COLUMNS]
    assert extra and all(c.startswith("synth_") for c in extra)
    for col in ("path", "lung_mask_path", "lesion_mask_path"):
        assert not back[col].str.startswith("/").any()
        assert all((out / p).is_file() for p in back[col])
    meta = read_sidecar(out / "manifest.csv")["generator"]
    assert meta["preset"] == "arias" and meta["n_images"] == 30 and meta["seed"] == 3
    assert meta["shortcut"] == 0.0 and "cxrlib_version" in meta
    # severity only for covid19
    assert back.loc[back["label"] != "covid19", "severity"].isna().all()
    assert back.loc[back["label"] == "covid19", "severity"].notna().all()


def test_8_and_16_bit_pngs_with_matching_masks(arias_cohort):
    df, out = arias_cohort
    depths = set()
    for row in df.itertuples():
        img = np.asarray(Image.open(out / row.path))
        expected = np.uint16 if row.synth_bit_depth == 16 else np.uint8
        assert img.dtype == expected, row.image_id
        depths.add(img.dtype)
        assert img.shape == (row.synth_height, row.synth_width)
        for mask_path in (row.lung_mask_path, row.lesion_mask_path):
            mask = np.asarray(Image.open(out / mask_path))
            assert mask.dtype == np.uint8 and mask.shape == img.shape
            assert set(np.unique(mask)) <= {0, 255}
    assert depths == {np.dtype(np.uint8), np.dtype(np.uint16)}


def test_masks_lesions_inside_two_lungs(arias_cohort):
    df, out = arias_cohort
    for row in df.itertuples():
        lung = np.asarray(Image.open(out / row.lung_mask_path)) > 0
        lesion = np.asarray(Image.open(out / row.lesion_mask_path)) > 0
        assert lung.mean() > 0.08, row.image_id
        assert not (lesion & ~lung).any(), row.image_id
        if row.projection == "PA":
            assert ndi.label(lung)[1] == 2, row.image_id
        if row.label == "control":
            assert not lesion.any(), row.image_id
        # the recorded ground truth is that of the written masks
        score = rale_score(lung, lesion)
        assert (score.total, score.right, score.left) == (
            row.synth_rale, row.synth_rale_right, row.synth_rale_left)
        assert row.synth_lesion_fraction == pytest.approx(lesion.sum() / lung.sum(), abs=1e-4)


def test_render_case_outputs():
    row = sample_cases("arias", 10, seed=0).iloc[0]
    out = render_case(row, 96, seed=0)
    h, w = out["image"].shape
    assert max(h, w) == 96
    assert h / w == pytest.approx(row["synth_aspect"], rel=0.05)
    assert out["image"].dtype == np.float32
    assert 0.0 <= out["image"].min() and out["image"].max() <= 1.0
    assert out["lung_mask"].dtype == bool and out["lesion_mask"].dtype == bool
    assert out["lung_fraction"] == pytest.approx(out["lung_mask"].mean())


def test_pixel_frame_round_trip_and_half_resolution():
    frame = PixelFrame.build((45, 38), px_per_cm=3.0, centre=(1.0, 12.0), angle=0.1)
    row, col = frame.to_pixels(frame.X[7, 5], frame.Y[7, 5])
    assert (row, col) == (pytest.approx(7, abs=1e-4), pytest.approx(5, abs=1e-4))
    x, y = frame.to_patient(7, 5)
    assert (x, y) == (pytest.approx(frame.X[7, 5], abs=1e-4),
                      pytest.approx(frame.Y[7, 5], abs=1e-4))
    coarse = frame.coarsen()
    assert coarse.shape == (23, 19) and coarse.px_per_cm == 1.5
    # coordinates are linear, so upsampling the coarse grid gives the fine one inside
    up = upsample2(coarse.X, frame.shape)
    assert up.shape == frame.shape
    assert np.abs(up - frame.X)[1:-2, 1:-2].max() < 1e-4


def test_keep_two_lungs_drops_specks():
    lung = _two_lungs()
    specks = lung.copy()
    specks[0, 0] = specks[19, 29] = True
    left = np.zeros(lung.shape, bool)
    left[:, 12:] = True
    assert np.array_equal(keep_two_lungs(specks, left), lung)
    assert np.array_equal(keep_two_lungs(lung, left), lung)


# ------------------------------------------------------------------------------------------
# disease and the RALE-like score
# ------------------------------------------------------------------------------------------

def test_lung_parts_on_a_hand_made_mask():
    assert split_column(_two_lungs()) == 12
    parts = lung_parts(_two_lungs())
    # rows 4-13: median row 8.5 -> 4-8 upper, 9-13 lower; right lung cols 2-9: median 5.5,
    # medial = cols 6-9; left lung cols 16-25: median 20.5, medial = cols 16-20
    assert parts[4, 2] == 1 and parts[4, 9] == 2 and parts[13, 2] == 3 and parts[13, 9] == 4
    assert parts[8, 5] == 1 and parts[8, 6] == 2 and parts[9, 5] == 3
    assert parts[4, 25] == 5 and parts[4, 16] == 6 and parts[13, 25] == 7 and parts[13, 20] == 8
    assert parts[4, 21] == 5 and parts[4, 20] == 6
    assert (parts == 0).sum() == (~_two_lungs()).sum()
    assert [int((parts == k).sum()) for k in range(1, 9)] == [20] * 4 + [25] * 4


def test_rale_score_hand_computed():
    lung = _two_lungs()
    lesion = np.zeros_like(lung)
    lesion[9:14, 2:6] = True        # right lower lateral, whole part: involved
    lesion[4:6, 16:21] = True       # left upper medial, 10 of 25 pixels: involved
    lesion[13, 25] = True           # left lower lateral, 1 of 25 pixels: below 0.1
    lesion[0, 0] = True             # outside the lungs: ignored
    score = rale_score(lung, lesion)
    assert (score.total, score.right, score.left) == (2, 1, 1)
    assert score.involved.tolist() == [[False, False, True, False], [False, True, False, False]]
    assert score.fraction[0, 2] == pytest.approx(1.0)
    assert score.fraction[1, 1] == pytest.approx(0.4)
    assert score.fraction[1, 2] == pytest.approx(0.04)
    assert rale_score(lung, lesion, min_fraction=0.04).total == 3
    assert rale_score(lung, lung).total == 8
    assert rale_score(lung, np.zeros_like(lung)).total == 0
    # 0/255 masks are accepted
    assert rale_score(lung.astype(np.uint8) * 255, lesion.astype(np.uint8) * 255).total == 2


def test_rale_score_rejects_bad_masks():
    lung = _two_lungs()
    with pytest.raises(ValueError, match="differ in shape"):
        rale_score(lung, lung[:, :-1])
    with pytest.raises(ValueError, match="lung_mask is empty"):
        rale_score(np.zeros_like(lung), lung)
    with pytest.raises(ValueError, match="min_fraction"):
        rale_score(lung, lung, min_fraction=0.0)
    with pytest.raises(ValueError, match="2-D"):
        rale_score(lung[None], lung[None])


def test_severity_from_rale():
    assert severity_from_rale(0) == "normal_pcr_pos"
    assert list(severity_from_rale([1, 2, 3, 5, 6, 8])) == [
        "mild", "mild", "moderate", "moderate", "severe", "severe"]
    for bad in (9, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="RALE"):
            severity_from_rale(bad)


def test_covid_lesions_hit_their_rale_target(covid_renders):
    for row, out in covid_renders:
        assert out["rale"].total == row["synth_rale_target"]
        assert severity_from_rale(out["rale"].total) == row["severity"]
        assert not (out["lesion_mask"] & ~out["lung_mask"]).any()
        if row["severity"] == "normal_pcr_pos":
            assert not out["lesion_mask"].any()


def test_lesion_extent_grows_with_severity(covid_renders):
    rale = [out["rale"].total for _, out in covid_renders]
    extent = [out["lesion_fraction"] for _, out in covid_renders]
    assert len(set(rale)) >= 4
    rho, _ = spearmanr(rale, extent)
    assert rho > 0.8
    # bilateral from moderate on: both lungs involved
    for r, (_, out) in zip(rale, covid_renders):
        if r >= 5:
            assert out["rale"].right > 0 and out["rale"].left > 0


def test_pneumonia_is_denser_and_mostly_one_sided():
    cases = sample_cases("arias", 200, seed=8)
    pneu = cases[(cases["label"] == "pneumonia") & ~cases["synth_lobe"].str.contains(r"\+")].head(6)
    for _, row in pneu.iterrows():
        out = render_case(row, 80, seed=8)
        lesion = out["lesion_mask"]
        assert lesion.any() and not (lesion & ~out["lung_mask"]).any()
        side = 0 if row["synth_lobe"].startswith("right") else 1
        assert (out["rale"].right, out["rale"].left)[1 - side] == 0
        # consolidation is brighter than the same side's aerated lung
        other = out["lung_mask"] & ~lesion
        assert out["image"][lesion].mean() > out["image"][other].mean()


# ------------------------------------------------------------------------------------------
# presets and the shortcut knob
# ------------------------------------------------------------------------------------------

def test_covidgr_is_balanced_pa_one_source_with_the_papers_severities():
    cases = sample_cases("covidgr", 852, seed=0)
    assert cases["label"].value_counts().to_dict() == {"control": 426, "covid19": 426}
    assert set(cases["projection"]) == {"PA"} and set(cases["source"]) == {"COVIDGR"}
    sev = cases.loc[cases["label"] == "covid19", "severity"].value_counts().to_dict()
    assert sev == {"normal_pcr_pos": 76, "mild": 100, "moderate": 171, "severe": 79}
    assert (cases.loc[cases["label"] == "control", "severity"] == "").all()
    # Table 3: 236 men among positives, 187 among negatives (sampled, so approximately)
    men = cases.groupby("label")["sex"].apply(lambda s: (s == "M").mean())
    assert men["covid19"] == pytest.approx(236 / 426, abs=0.08)
    assert men["control"] == pytest.approx(187 / 426, abs=0.08)


def test_arias_classes_and_sources_follow_the_paper():
    cases = sample_cases("arias", 400, seed=0)
    flags = {s.name: set(s.labels) for s in ARIAS_SOURCES}
    covid_sources = set(cases.loc[cases["label"] == "covid19", "source"])
    assert covid_sources == {"HM Hospitales", "BIMCV", "ACT"}
    for source, labels in cases.groupby("source")["label"]:
        assert set(labels) <= flags[source], source
    # Table II shares: 49983 / 24114 / 8573 of 82670
    counts = cases["label"].value_counts()
    assert counts["control"] == 242 and counts["pneumonia"] == 117 and counts["covid19"] == 41
    # every source at the smoke size, with the floor of 3 per (source, class)
    cells = cell_counts("arias", 120)
    assert (cells["n"] >= 3).all() and cells["n"].sum() == 120
    assert set(cells["source"]) == {s.name for s in ARIAS_SOURCES}
    # several images per patient for the hospital sources
    per_patient = cases[cases["source"] == "HM Hospitales"].groupby("patient_id").size()
    assert per_patient.max() > 1
    assert (cases.groupby("patient_id")["label"].nunique() == 1).all()


def _first_per_patient(cases):
    return cases.drop_duplicates("patient_id")


def test_shortcut_zero_makes_style_independent_of_label():
    cases = _first_per_patient(sample_cases("arias", 3000, seed=11, shortcut=0.0))
    for col in ("synth_style", "projection", "sensor", "synth_marker_corner", "synth_bit_depth"):
        table = pd.crosstab(cases[col], cases["label"])
        assert chi2_contingency(table).pvalue > 0.01, col
    assert (cases["synth_style"] != cases["source"]).mean() > 0.5


def test_shortcut_one_ties_style_to_source_and_label():
    cases = sample_cases("arias", 3000, seed=11, shortcut=1.0)
    assert (cases["synth_style"] == cases["source"]).all() and cases["synth_coupled"].all()
    first = _first_per_patient(cases)
    assert chi2_contingency(pd.crosstab(first["synth_style"], first["label"])).pvalue < 1e-10
    half = sample_cases("arias", 3000, seed=11, shortcut=0.5)
    assert 0.4 < half.drop_duplicates("patient_id")["synth_coupled"].mean() < 0.6


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'chexpert'"):
        sample_cases("chexpert", 10)
    for shortcut in (-0.1, 1.5, "high"):
        with pytest.raises(ValueError, match="shortcut"):
            sample_cases("arias", 10, shortcut=shortcut)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_images"):
            sample_cases("arias", n)
    with pytest.raises(ValueError, match="seed"):
        sample_cases("arias", 10, seed=-1)
    with pytest.raises(ValueError, match="size"):
        generate_cohort(tmp_path, "arias", 2, size=16, progress=False)
    with pytest.raises(ValueError, match="n_jobs"):
        generate_cohort(tmp_path, "arias", 2, size=SIZE, n_jobs=0, progress=False)
    assert set(PRESETS) == {"arias", "covidgr", "lungseg"}


def test_cohorts_name_a_preset_and_a_shortcut_knob():
    assert cohort_spec("arias") == ("arias", 1.0)
    assert cohort_spec("arias-noshortcut") == ("arias", 0.0)
    assert cohort_spec("covidgr") == ("covidgr", 1.0)
    assert list(COHORTS)[:2] == ["arias-noshortcut", "arias"]  # the twin runs first
    assert shortcut_twin("arias") == "arias-noshortcut"
    assert shortcut_twin("arias-noshortcut") == "arias"
    assert shortcut_twin("covidgr") is None
    with pytest.raises(ValueError, match="unknown synthetic cohort 'arias0'"):
        cohort_spec("arias0")


def test_open_study_generates_the_cohort_with_its_knob(tmp_path, monkeypatch):
    import cxrlib.data.synthetic as synthetic
    from cxrlib.study import open_study

    calls = []

    def fake_default_cohort(preset, profile, seed=0, shortcut=1.0, progress=True):
        calls.append((preset, shortcut))
        raise RuntimeError("stop here")

    monkeypatch.setattr(synthetic, "default_cohort", fake_default_cohort)
    for name, override, expected in (("arias-noshortcut", None, ("arias", 0.0)),
                                     ("arias", None, ("arias", 1.0)),
                                     ("arias", 0.5, ("arias", 0.5))):
        with pytest.raises(RuntimeError, match="stop here"):
            open_study("smoke", name, run_dir=tmp_path, shortcut=override)
        assert calls[-1] == expected


# ------------------------------------------------------------------------------------------
# the cached default cohort
# ------------------------------------------------------------------------------------------

def test_default_cohort_is_cached_and_regenerated_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path))
    prof = get_profile("smoke").with_overrides(name="tiny", n_covidgr=4, synth_size=SIZE)
    csv = default_cohort("covidgr", prof, seed=0, progress=False)
    assert csv == tmp_path / "synthetic" / "covidgr-tiny-s0-sc1.0" / "manifest.csv"
    assert len(load_manifest(csv)) == 4
    stamp = csv.stat().st_mtime_ns
    assert default_cohort("covidgr", prof, seed=0, progress=False) == csv
    assert csv.stat().st_mtime_ns == stamp  # reused, not regenerated
    bigger = prof.with_overrides(n_covidgr=6)
    assert len(load_manifest(default_cohort("covidgr", bigger, seed=0, progress=False))) == 6
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == ["covidgr-tiny-s0-sc1.0"]


# ------------------------------------------------------------------------------------------
# realism of what a lung segmenter must learn (sim-to-real, issue 4)
# ------------------------------------------------------------------------------------------

def _anatomy(seed: int = 0, size: int = 96, margin_top: float = 0.3, margin_bottom: float = 0.3):
    """One upright PA thorax framed with room above the apices and below the domes."""
    from cxrlib.data.synthetic.acquisition import view_frame
    from cxrlib.data.synthetic.anatomy import (
        build_thorax, pose_subject, render_anatomy, sample_subject,
    )

    rng = np.random.default_rng(seed)
    thorax = build_thorax(pose_subject(sample_subject(rng, "F", 50.0), rng, "PA", False))
    frame = view_frame(thorax, (size, size), 1.1, margin_top, margin_bottom, (0.0, 0.0), 0.0)
    return thorax, frame, render_anatomy(thorax, frame, rng, fields=("air", "height"))


def test_neck_and_subphrenic_recess_are_outside_the_lung_mask():
    from cxrlib.data.synthetic.anatomy import _lookup

    thorax, frame, out = _anatomy()
    mask, air = out["mask"], out["air"]
    # nothing above the apices (neck, supraclavicular fossae) is lung
    assert not mask[frame.Y < min(thorax.apex_y)].any()
    assert (frame.Y < min(thorax.apex_y) - 1.0).sum() > 0.05 * mask.size
    # below the domes the posterior recesses still hold air (dark), yet they are not lung
    dome = thorax.dome[_lookup(thorax, frame.X, frame.Y).side_u]  # diaphragm row per pixel, cm
    recess = (frame.Y > dome + 0.3) & (air > 0.02)
    assert recess.any() and not (recess & mask).any()
    # and the recess holds less air than the lung just above the dome
    assert air[recess].mean() < air[mask & (frame.Y > dome - 2.0)].mean()


def test_neck_soft_tissue_varies_between_patients():
    from cxrlib.data.synthetic.anatomy import build_thorax, sample_subject

    tissue = [sample_subject(np.random.default_rng(s), "M", 40.0).neck_tissue for s in range(40)]
    assert 0.5 <= min(tissue) < 0.75 and 0.95 < max(tissue) <= 1.2
    thin, thick = (build_thorax(sample_subject(np.random.default_rng(s), "M", 40.0))
                   for s in (int(np.argmin(tissue)), int(np.argmax(tissue))))

    def neck(th):  # rows far above the apex
        return th.row_tables["thickness"][:100].mean()

    assert neck(thin) < 0.8 * neck(thick)
    # the chest itself is as thick in both
    assert thin.row_tables["thickness"][-200] == pytest.approx(thick.row_tables["thickness"][-200])


def test_effusion_is_an_opacity_inside_the_unchanged_lung_outline():
    cases = sample_cases("arias", 300, seed=4)
    case = cases[(cases["label"] == "pneumonia") & cases["synth_effusion"]
                 & (cases["synth_collimation"] == "none")
                 & ~cases["synth_lobe"].str.contains(r"\+")].iloc[0]
    dry_case = case.copy()
    dry_case["synth_effusion"] = False
    dry = render_case(dry_case, 96, seed=4)
    wet = render_case(case, 96, seed=4)
    # the radiologist's outline of the lung does not shrink: the fluid is lung-mask territory
    assert np.array_equal(wet["lung_mask"], dry["lung_mask"])
    lung, lesion = wet["lung_mask"], wet["lesion_mask"]
    assert not (lesion & ~lung).any()
    rows = np.nonzero(lung.any(axis=1))[0]
    base = np.zeros_like(lung)
    base[rows[-1] - max(2, (rows[-1] - rows[0]) // 10):rows[-1] + 1] = True
    side = case["synth_lobe"].startswith("left")
    cols = np.arange(lung.shape[1])[None, :]
    own = (cols >= lung.shape[1] // 2) if side else (cols < lung.shape[1] // 2)
    # the effused base is in the lesion mask and brighter than the other lung's dry base
    assert (lesion & base & own).sum() > 0.5 * (lung & base & own).sum()
    image = wet["image"]
    assert image[lesion & base & own].mean() > image[lung & base & ~own & ~lesion].mean() + 0.05


def test_covid_consolidation_is_densest_in_the_lower_zones():
    from cxrlib.data.synthetic.disease import covid_lesions

    lung = np.zeros((80, 80), bool)
    lung[8:72, 6:36] = lung[8:72, 44:74] = True
    rows = np.arange(80, dtype=np.float32)[:, None]
    height = np.broadcast_to(np.clip((rows - 8) / 63, 0, 1), lung.shape)
    fields = {"height": height.astype(np.float32),
              "lateralness": np.full(lung.shape, 0.8, np.float32),
              "air": np.where(lung, np.float32(1), np.float32(0))}
    lesion, opacity = covid_lesions(lung, fields, 8, 1.0, 2.0, np.random.default_rng(0))
    upper, lower = lesion & (fields["height"] < 0.4), lesion & (fields["height"] > 0.6)
    assert upper.any() and lower.any()
    assert np.percentile(opacity[lower], 95) > 1.3 * np.percentile(opacity[upper], 95)
    # severe disease is about as dense as soft tissue (0.4-0.6 attenuation) at the bases
    assert opacity[lower].max() > 0.45


def test_lung_mask_includes_the_lung_projected_over_the_heart():
    """``over_heart`` (MASK_CONVENTIONS, preset ``lungseg``): where the heart overlies the left
    lung the mask is still lung, its medial border the mediastinum's, not the heart's; the
    mediastinum itself stays outside. Without it (``arias``, ``covidgr``) no lung pixel is over
    the heart."""
    from cxrlib.data.synthetic.anatomy import _lookup, lung_fields

    thorax, frame, _ = _anatomy(size=128)
    fields = lung_fields(thorax, frame.X, frame.Y, over_heart=True)
    border = lung_fields(thorax, frame.X, frame.Y)["mask"]
    mask, heart = fields["mask"], fields["heart"]
    over_heart = mask & (heart > 0.3) & (frame.X > 0)
    assert over_heart.sum() > 0.02 * mask.sum()
    med_air = thorax.side_tables["med_air"][_lookup(thorax, frame.X, frame.Y).side_row]
    assert not (mask & (np.abs(frame.X) < med_air - 0.5)).any()
    # at the heart's widest row the left lung reaches in to the mediastinum, past the heart
    row = int(np.argmax((heart > 0.3).sum(axis=1)))
    left = np.flatnonzero(mask[row] & (frame.X[row] > 0))
    heart_cols = np.flatnonzero(heart[row] > 0.3)
    assert left.size and left.min() < heart_cols.max()
    assert not (border & (fields["heart"] > 0.3) & (frame.X > 0)).any()
    assert (border <= mask).all() and mask.sum() > border.sum()


def test_child_proportions_shorter_thorax_larger_heart_adults_unchanged():
    from cxrlib.data.synthetic.anatomy import ADULT_FROM_AGE, child_proportions, sample_subject

    adult = sample_subject(np.random.default_rng(3), "M", 40.0)
    assert child_proportions(adult, ADULT_FROM_AGE) is adult
    assert child_proportions(adult, 30.0) is adult
    # the body of a patient is drawn with the same draws at any age: only proportions change
    rng_a, rng_c = np.random.default_rng(3), np.random.default_rng(3)
    child = sample_subject(rng_c, "M", 2.0)
    sample_subject(rng_a, "M", 40.0)
    assert rng_a.random() == rng_c.random()
    assert child.lung_height / child.half_width < 0.75 * adult.lung_height / adult.half_width
    assert child.heart_ctr > adult.heart_ctr + 0.04
    assert child.mediastinum > adult.mediastinum and child.breast == 0.0
    school = sample_subject(np.random.default_rng(3), "M", 7.0)  # half-way
    assert child.lung_height < school.lung_height < adult.lung_height


def test_lungseg_preset_has_children_every_framing_and_more_disease():
    from cxrlib.data.synthetic.presets import ARIAS, LUNGSEG

    cases = sample_cases("lungseg", 400, seed=0)
    kids = cases[cases["source"] == "Paediatric"]
    assert len(kids) > 20 and kids["age"].between(1, 11).all()
    assert set(kids["projection"]) == {"AP"} and set(kids["label"]) <= {"control", "pneumonia"}
    assert (cases.loc[cases["source"] != "Paediatric", "age"] >= 18).all()
    assert LUNGSEG.class_shares["control"] < ARIAS.class_shares["control"]
    assert LUNGSEG.mask_over_heart and not ARIAS.mask_over_heart
    for src in LUNGSEG.sources:
        assert src.style.margin_top[1] >= 0.35 and src.style.margin_side[1] >= 1.45
    # a child's film at the same size renders, with lungs shorter for their width
    r = render_case(kids.iloc[0], size=96, seed=0)
    rows, cols = np.nonzero(r["lung_mask"])
    assert (rows.max() - rows.min()) < 1.1 * (cols.max() - cols.min())
