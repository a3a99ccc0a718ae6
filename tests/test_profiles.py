import pytest

from cxrlib.profiles import PROFILES, get_profile


def test_three_profiles_scale_up():
    s, d, p = (get_profile(n) for n in ("smoke", "default", "paper"))
    for field in ("n_arias", "n_covidgr", "image_size", "epochs", "seg_epochs"):
        assert getattr(s, field) <= getattr(d, field) <= getattr(p, field), field
    # the paper profile uses the papers' own settings
    assert (p.image_size, p.folds, p.repetitions, p.width) == (224, 5, 5, 1.0)
    assert p.epochs == 24  # seed 001's COVID-Net variant
    # ROAD at the ROAD paper's nine percentiles; fewer, increasing, inside (0, 100) elsewhere
    assert p.cam_road_percentiles == tuple(range(10, 100, 10))
    for prof in (s, d, p):
        q = prof.cam_road_percentiles
        assert list(q) == sorted(set(q)) and 0 < q[0] and q[-1] < 100


def test_unknown_profile_and_overrides():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        get_profile("fast")
    s = get_profile("smoke").with_overrides(epochs=3)
    assert s.epochs == 3 and PROFILES["smoke"].epochs == 1
    with pytest.raises(TypeError):
        get_profile("smoke").with_overrides(nonsense=1)
