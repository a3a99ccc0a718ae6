"""The preprocessed views: boxes to the pixel, the 5x5 dilation, equalisation inside the lung,
and the on-disk cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from skimage import exposure

from cxrlib.data.images import read_image, read_mask
from cxrlib.data.manifest import validate_manifest
from cxrlib.preprocess.views import (
    BOX_COLUMNS, build_views, crop_to_box, equalize, exp1_view, exp2_view, exp3_view, lung_extent,
    make_view, mask_file_name, rect_roi_box, sdnet_box, sdnet_view, square_roi_box, view_box,
)


def two_lungs(shape=(40, 60), rows=(10, 30), left=(10, 20), right=(25, 35)) -> np.ndarray:
    """Two rectangular 'lungs' on rows [rows), columns [left) and [right)."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], left[0]:left[1]] = True
    mask[rows[0]:rows[1], right[0]:right[1]] = True
    return mask


def textured(shape, seed=0) -> np.ndarray:
    """A float image in [0.1, 0.9] with many grey levels."""
    return np.random.default_rng(seed).uniform(0.1, 0.9, shape).astype(np.float32)


# ---------------------------------------------------------------------------------- boxes


def test_lung_extent_is_the_tight_box_of_both_lungs():
    assert lung_extent(two_lungs()) == (10, 30, 10, 35)


def test_square_box_is_centred_with_the_longer_extent_as_side():
    # extent 20 rows x 25 columns: side 25, rows grow by (25 - 20) // 2 = 2 above, 3 below
    assert square_roi_box(two_lungs()) == (8, 33, 10, 35)
    # taller than wide: 30 rows x 10 columns -> columns grow by 10 left, 10 right
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:35, 20:30] = True
    assert square_roi_box(mask) == (5, 35, 10, 40)


def test_square_box_may_leave_the_image_and_the_crop_pads_with_black():
    image = textured((40, 60))
    mask = np.zeros((40, 60), dtype=bool)
    mask[0:10, 10:50] = True                       # 10 rows x 40 columns at the top edge
    box = square_roi_box(mask)
    assert box == (-15, 25, 10, 50)
    crop = crop_to_box(image, box)
    assert crop.shape == (40, 40)
    assert np.all(crop[:15] == 0)                  # above the image: padding
    np.testing.assert_array_equal(crop[15:], image[0:25, 10:50])


def test_rect_and_sdnet_boxes_add_the_margin_and_clip():
    mask = np.zeros((200, 300), dtype=bool)
    mask[20:180, 40:240] = True                    # 160 rows x 200 columns
    assert rect_roi_box(mask) == (20, 180, 40, 240)
    # 2.5%: round(0.025 * 160) = 4 rows, round(0.025 * 200) = 5 columns on each side
    assert sdnet_box(mask) == (16, 184, 35, 245)
    # touching the border: clipped to the image
    mask = np.zeros((100, 100), dtype=bool)
    mask[0:100, 10:90] = True
    assert sdnet_box(mask) == (0, 100, 8, 92)


def test_boxes_reject_an_empty_mask():
    with pytest.raises(ValueError, match="empty"):
        square_roi_box(np.zeros((10, 10), dtype=bool))
    with pytest.raises(ValueError, match="margin"):
        rect_roi_box(two_lungs(), margin=-0.1)


# ---------------------------------------------------------------------------------- pixels


def test_equalize_uses_only_the_region_histogram_and_zeroes_the_rest():
    image = textured((30, 30))
    region = np.zeros_like(image, dtype=bool)
    region[5:20, 5:25] = True
    out = equalize(image, region)
    assert out.dtype == np.float32
    assert np.all(out[~region] == 0)
    np.testing.assert_allclose(out[region], exposure.equalize_hist(image[region]), atol=1e-6)
    changed = image.copy()
    changed[~region] = 0.99                        # what lies outside must not matter
    np.testing.assert_array_equal(equalize(changed, region), out)


def test_exp1_equalises_the_whole_image_and_centre_crops_to_size():
    image = textured((40, 60))
    np.testing.assert_allclose(exp1_view(image), exposure.equalize_hist(image), atol=1e-6)
    # black 10-column bands left and right of a horizontal ramp: 40 x 70 -> 20 x 35, and the
    # centre 20 columns (output 7..26, original 14..53) hold the ramp only
    image = np.zeros((40, 70), dtype=np.float32)
    image[:, 10:60] = np.linspace(0.2, 0.8, 50, dtype=np.float32)
    out = exp1_view(image, size=20)
    assert out.shape == (20, 20)
    assert np.all(np.diff(out[10]) > 0)            # no black band: strictly increasing


def test_exp2_crops_the_unmasked_image_to_the_square():
    image, mask = textured((40, 60)), two_lungs()
    out = exp2_view(image, mask)
    assert out.shape == (25, 25)
    np.testing.assert_allclose(out, equalize(image[8:33, 10:35]), atol=1e-6)
    assert exp2_view(image, mask, size=16).shape == (16, 16)
    # the public code's rectangle: the tight box
    assert exp2_view(image, mask, box="rect").shape == (20, 25)


def test_exp3_multiplies_by_the_mask_dilated_5x5_and_equalises_inside_only():
    image, mask = textured((40, 60)), two_lungs()   # lungs cols 10-19 and 25-34, gap 20-24
    out = exp3_view(image, mask)
    box = (8, 33, 10, 35)
    dilated = crop_to_box(ndimage.binary_dilation(mask, np.ones((5, 5), bool)), box)
    np.testing.assert_array_equal(out > 0, dilated)
    # by hand, in crop coordinates (lung rows 2..21, cols 0..9 and 15..24): the dilation adds
    # 2 pixels around, so the 5-column gap (crop cols 10..14) keeps only its middle column 12
    row = out[10]
    assert row[11] > 0 and row[12] == 0 and row[13] > 0
    expected = equalize(crop_to_box(image, box) * dilated, dilated)
    np.testing.assert_array_equal(out, expected)


def test_exp3_public_code_variant_erodes_and_equalises_non_zero_pixels():
    image, mask = textured((40, 60)), two_lungs()
    image[15, 15] = 0.0                             # a black pixel inside the left lung
    out = exp3_view(image, mask, box="rect", mask_op="erode", equalize_on="nonzero")
    box = rect_roi_box(mask)
    eroded = crop_to_box(ndimage.binary_erosion(mask, np.ones((5, 5), bool)), box)
    assert out.shape == (20, 25)
    np.testing.assert_array_equal(out > 0, eroded & (crop_to_box(image, box) > 0))
    assert out[15 - 10, 15 - 10] == 0               # excluded from the equalised set
    paper = make_view("exp3", image, mask, variant="paper")
    public = make_view("exp3", image, mask, variant="public_code")
    assert paper.shape != public.shape


def test_sdnet_view_crops_the_box_and_resizes():
    image = textured((200, 300))
    mask = np.zeros((200, 300), dtype=bool)
    mask[20:180, 40:240] = True
    np.testing.assert_array_equal(sdnet_view(image, mask), image[16:184, 35:245])
    equalised = sdnet_view(image, mask, histogram_equalization=True)
    np.testing.assert_allclose(equalised, equalize(image[16:184, 35:245]), atol=1e-6)
    assert sdnet_view(image, mask, size=32).shape == (32, 32)


def test_views_reject_bad_input():
    image = textured((40, 60))
    with pytest.raises(ValueError, match="different shapes"):
        exp2_view(image, two_lungs((40, 61)))
    with pytest.raises(ValueError, match="empty"):
        exp3_view(image, np.zeros((40, 60), dtype=bool))
    with pytest.raises(ValueError, match="mask_op"):
        exp3_view(image, two_lungs(), mask_op="open")
    with pytest.raises(ValueError, match="unknown view"):
        make_view("exp4", image, two_lungs())
    with pytest.raises(ValueError, match="unknown variant"):
        make_view("exp2", image, two_lungs(), variant="keras")


# ---------------------------------------------------------------------------------- cache


def test_mask_file_name_encodes_unsafe_characters():
    assert mask_file_name("img_001") == "img_001.png"
    assert mask_file_name("a/b c") == "a%2Fb%20c.png"
    assert mask_file_name("a/b") != mask_file_name("a_b")


@pytest.fixture()
def tiny_manifest(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    masks = tmp_path / "pred_masks"
    masks.mkdir()
    rows = []
    for i in range(3):
        image = (textured((40, 60), seed=i) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        Image.fromarray(two_lungs().astype(np.uint8) * 255).save(masks / mask_file_name(f"im{i}"))
        rows.append({"image_id": f"im{i}", "path": f"images/im{i}.png", "patient_id": f"p{i}",
                     "source": "hand", "label": "control"})
    manifest = validate_manifest(pd.DataFrame(rows), data_root=root)
    manifest.attrs["data_root"] = str(root)
    return manifest, masks


def test_build_views_writes_every_view_then_reads_the_cache(tiny_manifest, tmp_path):
    manifest, masks = tiny_manifest
    cache = tmp_path / "views"
    built = build_views(manifest, masks, size=16, cache_dir=cache, progress=False)
    first = built.table
    assert list(first.columns) == ["image_id", "view", "path", "cached", *BOX_COLUMNS]
    assert len(first) == 3 * 4 and built.n_computed == 12 and not first["cached"].any()
    for path in first["path"]:
        assert read_image(path).shape == (16, 16)
    mtimes = {p: os.stat(p).st_mtime_ns for p in first["path"]}

    built = build_views(manifest, masks, size=16, cache_dir=cache, progress=False)
    second = built.table
    assert built.n_computed == 0 and built.n_cached == 12 and second["cached"].all()
    assert list(second["path"]) == list(first["path"])
    assert {p: os.stat(p).st_mtime_ns for p in second["path"]} == mtimes

    # other parameters or other pixels: new files
    public = build_views(manifest, masks, size=16, cache_dir=cache, variant="public_code",
                         progress=False)
    assert public.n_computed == 6       # exp1 and sdnet are the same in both variants
    assert set(public.table["view"]) == {"exp1", "exp2_public_code", "exp3_public_code", "sdnet"}
    Image.fromarray((textured((40, 60), seed=9) * 255).astype(np.uint8)).save(
        manifest.attrs["data_root"] + "/images/im0.png")
    third = build_views(manifest, masks, size=16, cache_dir=cache, progress=False)
    assert third.n_computed == 4 and third.n_cached == 8


def test_build_views_keeps_the_box_each_view_shows(tiny_manifest, tmp_path):
    manifest, masks = tiny_manifest
    cache = tmp_path / "views"
    first = build_views(manifest, masks, size=16, cache_dir=cache, progress=False).table
    root = Path(manifest.attrs["data_root"])
    for rec in first.itertuples(index=False):
        row = manifest.set_index("image_id").loc[rec.image_id]
        image = read_image(root / row["path"])
        mask = read_mask(masks / mask_file_name(rec.image_id))
        assert tuple(getattr(rec, c) for c in BOX_COLUMNS) == view_box(
            rec.view, image.shape, mask, size=16)
    # from the cache, the same boxes; a cache made before the boxes were kept gets them back
    for box_file in cache.rglob("*.box.json"):
        box_file.unlink()
    built = build_views(manifest, masks, size=16, cache_dir=cache, progress=False)
    again = built.table
    assert again["cached"].all() and built.n_computed == 0
    pd.testing.assert_frame_equal(again.drop(columns="cached"), first.drop(columns="cached"))
    assert len(list(cache.rglob("*.box.json"))) == len(first)


def test_build_views_names_the_image_whose_mask_is_missing(tiny_manifest, tmp_path):
    manifest, masks = tiny_manifest
    (masks / mask_file_name("im1")).unlink()
    with pytest.raises(FileNotFoundError, match="im1"):
        build_views(manifest, masks, size=16, cache_dir=tmp_path / "v", progress=False)
    only_exp1 = build_views(manifest, masks, views=["exp1"], size=16, cache_dir=tmp_path / "v",
                            progress=False)
    assert len(only_exp1.table) == 3
    with pytest.warns(UserWarning, match="skipped"):
        out = build_views(manifest, masks, size=16, cache_dir=tmp_path / "v",
                          on_bad_mask="skip", progress=False)
    assert len(out.table) == 3 * 4 - 3
    assert {(i, v) for i, v, _ in out.skipped} == {("im1", v) for v in
                                                             ("exp2", "exp3", "sdnet")}


def test_equalize_gives_exactly_skimages_values_on_8_bit_and_float_images():
    rng = np.random.default_rng(5)
    for i in range(30):
        shape = (int(rng.integers(3, 70)), int(rng.integers(3, 70)))
        image = (rng.random(shape) ** 2).astype(np.float32)
        if i % 2:
            image = np.round(image * 255).astype(np.float32) / 255  # ties on bin centres
        region = rng.random(image.shape) < 0.6
        np.testing.assert_array_equal(equalize(image),
                                      exposure.equalize_hist(image).astype(np.float32))
        expected = np.zeros_like(image)
        expected[region] = exposure.equalize_hist(image, mask=region)[region]
        np.testing.assert_array_equal(equalize(image, region), expected)


def test_dilate_mask_square_and_disk_by_hand():
    from cxrlib.preprocess.views import dilate_mask

    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    disk = dilate_mask(mask, 1, footprint="disk")
    assert disk.sum() == 5 and disk[1, 2] and disk[2, 1] and not disk[1, 1]
    assert dilate_mask(mask, 1.5, footprint="disk").sum() == 9  # the corners are 1.41 away
    assert dilate_mask(mask, 1).sum() == 9  # square: 3 x 3
    assert (dilate_mask(mask, 0, footprint="disk") == mask).all()
    with pytest.raises(ValueError, match="2-D"):
        dilate_mask(np.zeros(4), 1, footprint="disk")
    with pytest.raises(ValueError, match="radius must be >= 0"):
        dilate_mask(mask, -1)
    with pytest.raises(ValueError, match="footprint"):
        dilate_mask(mask, 1, footprint="cross")
