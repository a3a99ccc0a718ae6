"""DICOM reading: display pipeline values, flags for non-radiographs, errors, cache, writing."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, RLELossless

from cxrlib.data import dicom
from cxrlib.data.dicom import (
    DicomError,
    dataset_from_tags,
    dicom_to_cached_png,
    exclusion_reason,
    parse_dicom_age,
    parse_dicom_date,
    projection_from_description,
    read_dicom,
    read_dicom_header,
    to_display_uint16,
    write_dicom,
)

STORED_12BIT = np.array([[0, 1000], [2000, 4095]], dtype=np.uint16)


def test_parse_dicom_age_units():
    assert parse_dicom_age("065Y") == 65.0
    assert parse_dicom_age("006M") == 0.5
    assert parse_dicom_age("014D") == round(14 / 365.25, 2)
    assert parse_dicom_age("58") == 58.0
    assert parse_dicom_age("414Y") is None  # beyond 120 years: an error of the source
    assert parse_dicom_age("abc") is None
    assert parse_dicom_age(None) is None


def test_parse_dicom_date():
    assert parse_dicom_date("20200315") == "2020-03-15"
    assert parse_dicom_date("2020-03-15") == "2020-03-15"
    assert parse_dicom_date("20201345") is None
    assert parse_dicom_date("") is None


@pytest.mark.parametrize("text, expected", [
    ("RX TORAX AP", "AP"), ("PORTATIL", "AP"), ("TORAX PA", "PA"), ("Chest lateral", "LAT"),
    ("TORAX PA Y LAT", None), ("TORAX", None), (None, None),
])
def test_projection_from_description(text, expected):
    assert projection_from_description(text) == expected


def test_no_window_stretches_min_max(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "a.dcm", {"Modality": "DX"}, bits_stored=12)
    image, header = read_dicom(path)
    assert image.dtype == np.uint16
    # (v - 0) / 4095 * 65535, rounded
    np.testing.assert_array_equal(image, [[0, 16004], [32007, 65535]])
    assert header.photometric == "MONOCHROME2"


def test_monochrome1_is_inverted(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "m1.dcm", {"Modality": "CR"},
                       photometric="MONOCHROME1", bits_stored=12)
    image, _ = read_dicom(path)
    np.testing.assert_array_equal(image, 65535 - np.array([[0, 16004], [32007, 65535]]))


def test_window_center_width(tmp_path):
    stored = np.array([[1000, 2048, 3000]], dtype=np.uint16)
    path = write_dicom(stored, tmp_path / "w.dcm", {}, window=(2048, 1024), bits_stored=12)
    image, _ = read_dicom(path)
    # LINEAR window (PS3.3 C.11.2.1.2): c = 2047.5, w = 1023; 1000 is below, 3000 above.
    middle = round(65535 * ((2048 - 2047.5) / 1023 + 0.5))
    np.testing.assert_array_equal(image, [[0, middle, 65535]])


def test_rescale_then_window(tmp_path):
    stored = np.array([[0, 1000, 4095]], dtype=np.uint16)
    tags = {"RescaleSlope": 2, "RescaleIntercept": -100}
    path = write_dicom(stored, tmp_path / "r.dcm", tags, window=(1000, 2000), bits_stored=12)
    image, _ = read_dicom(path)
    modality_value = 1000 * 2 - 100  # 1900, inside the window [0, 1999]
    fraction = (modality_value - 999.5) / 1999 + 0.5
    assert image[0, 0] == 0 and image[0, 2] == 65535
    assert abs(int(image[0, 1]) - 65535 * fraction) <= 1


def test_voi_lut_sequence_preferred(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new("LUTData", "US", [0, 1000, 30000, 65535])
    stored = np.array([[0, 1, 2, 3, 9]], dtype=np.uint16)
    path = write_dicom(stored, tmp_path / "lut.dcm", {"VOILUTSequence": [item]},
                       window=(100, 50), bits_stored=12)
    image, _ = read_dicom(path)
    np.testing.assert_array_equal(image, [[0, 1000, 30000, 65535, 65535]])


def test_apply_voi_off_ignores_window(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "w.dcm", {}, window=(10, 5), bits_stored=12)
    image, _ = read_dicom(path, apply_voi_tags=False)
    np.testing.assert_array_equal(image, [[0, 16004], [32007, 65535]])


def test_header_reads_allow_listed_tags(tmp_path):
    tags = {"Modality": "CR", "ViewPosition": "PA", "PatientSex": "F", "PatientAge": "054Y",
            "StudyDate": "20200401", "PatientName": "Doe^Jane", "PatientID": "ID-42"}
    path = write_dicom(STORED_12BIT, tmp_path / "h.dcm", tags, bits_stored=12)
    header = read_dicom_header(path, pseudonym_key=b"k" * 16, namespace="test")
    assert (header.modality, header.projection, header.sex, header.age, header.study_date) == \
        ("CR", "PA", "F", 54.0, "2020-04-01")
    assert header.patient_pseudonym.startswith("test-")
    values = " ".join(str(v) for v in header.as_dict().values())
    assert "Doe" not in values and "ID-42" not in values


def test_projection_falls_back_on_description(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "d.dcm", {"StudyDescription": "RX TORAX AP"},
                       bits_stored=12)
    assert read_dicom_header(path).projection == "AP"


def test_lateral_is_imported_with_projection_lat(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "l.dcm", {"ViewPosition": "LL"}, bits_stored=12)
    header = read_dicom_header(path)
    assert header.projection == "LAT"
    assert exclusion_reason(header) is None


@pytest.mark.parametrize("kind, expected", [
    ("ct", "modality 'CT' is not a radiograph"),
    ("photo", "secondary capture"),
    ("rgb", "colour DICOM"),
    ("multiframe", "multi-frame DICOM (3 frames)"),
])
def test_non_radiographs_are_flagged(tmp_path, kind, expected):
    gray = np.arange(64, dtype=np.uint16).reshape(8, 8)
    if kind == "ct":
        path = write_dicom(gray, tmp_path / "ct.dcm", {"Modality": "CT"})
    elif kind == "photo":
        path = write_dicom(np.zeros((8, 8, 3), np.uint8), tmp_path / "p.dcm",
                           {"Modality": "XC"}, photometric="RGB")
    elif kind == "rgb":
        path = write_dicom(np.zeros((8, 8, 3), np.uint8), tmp_path / "rgb.dcm",
                           {"Modality": "DX"}, photometric="RGB")
    else:
        path = write_dicom(np.stack([gray] * 3), tmp_path / "mf.dcm", {})
    assert expected in exclusion_reason(read_dicom_header(path))


def test_rgb_and_multiframe_cannot_be_decoded_as_radiographs(tmp_path):
    path = write_dicom(np.zeros((8, 8, 3), np.uint8), tmp_path / "rgb.dcm", {},
                       photometric="RGB")
    with pytest.raises(DicomError, match="single grayscale frame"):
        read_dicom(path)


def test_truncated_file_raises_naming_the_file(tmp_path):
    path = write_dicom(np.zeros((64, 64), np.uint16), tmp_path / "t.dcm", {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(DicomError, match="t.dcm: cannot decode pixel data"):
        read_dicom(path)


def test_missing_pixel_data(tmp_path):
    path = write_dicom(np.zeros((8, 8), np.uint16), tmp_path / "np.dcm", {})
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert exclusion_reason(read_dicom_header(path)).startswith("no pixel data")
    with pytest.raises(DicomError, match="no pixel data"):
        read_dicom(path)


def test_not_a_dicom_file(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomError, match="x.dcm"):
        read_dicom(path)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_syntaxes_decode_losslessly(tmp_path, syntax):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no {syntax.name} encoder: pip install pylibjpeg pylibjpeg-openjpeg")
    stored = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    plain, _ = read_dicom(write_dicom(stored, tmp_path / "plain.dcm", {}, bits_stored=12))
    packed = write_dicom(stored, tmp_path / "packed.dcm", {}, bits_stored=12,
                         transfer_syntax=syntax)
    image, header = read_dicom(packed)
    assert header.transfer_syntax == syntax.name
    np.testing.assert_array_equal(image, plain)


def test_missing_decoder_names_syntax_and_package(tmp_path, monkeypatch):
    stored = np.zeros((64, 64), np.uint16)
    path = write_dicom(stored, tmp_path / "r.dcm", {}, transfer_syntax=RLELossless)
    fake = SimpleNamespace(is_available=False,
                           missing_dependencies=["pylibjpeg - requires pylibjpeg-rle"])
    monkeypatch.setattr(dicom, "get_decoder", lambda uid: fake)
    with pytest.raises(DicomError, match=r"'RLE Lossless'.*pip install pylibjpeg pylibjpeg-rle"):
        read_dicom(path)


def test_unsupported_syntax_names_it(tmp_path, monkeypatch):
    path = write_dicom(np.zeros((64, 64), np.uint16), tmp_path / "u.dcm", {},
                       transfer_syntax=RLELossless)

    def no_decoder(uid):
        raise NotImplementedError(uid)

    monkeypatch.setattr(dicom, "get_decoder", no_decoder)
    with pytest.raises(DicomError, match="RLE Lossless.*has no pixel decoder"):
        read_dicom(path)


def test_cache_is_keyed_by_content(tmp_path):
    a = write_dicom(STORED_12BIT, tmp_path / "a.dcm", {}, bits_stored=12)
    b = write_dicom(STORED_12BIT[::-1].copy(), tmp_path / "b.dcm", {}, bits_stored=12)
    png_a, _ = dicom_to_cached_png(a, tmp_path / "cache")
    png_a_again, header = dicom_to_cached_png(a, tmp_path / "cache")
    png_b, _ = dicom_to_cached_png(b, tmp_path / "cache")
    assert png_a == png_a_again and png_a != png_b
    assert header.rows == 2
    with Image.open(png_a) as img:
        assert img.mode in ("I;16", "I")
        np.testing.assert_array_equal(np.asarray(img), read_dicom(a)[0])


def test_display_pipeline_on_sidecar_tags():
    ds = dataset_from_tags({"PhotometricInterpretation": "MONOCHROME1", "BitsStored": 12})
    out = to_display_uint16(STORED_12BIT, ds)
    np.testing.assert_array_equal(out, 65535 - np.array([[0, 16004], [32007, 65535]]))
    text = dataset_from_tags({"BitsStored": "12", "WindowCenter": "2048",  # as in a JSON sidecar
                              "WindowWidth": "4096", "PhotometricInterpretation": "MONOCHROME1"})
    np.testing.assert_array_equal(to_display_uint16(np.array([[0, 4095]], np.uint16), text),
                                  [[65535, 0]])
    with pytest.raises(ValueError, match="unknown DICOM keyword"):
        dataset_from_tags({"NotATag": 1})
    with pytest.raises(ValueError, match="'wide' is not a number"):
        dataset_from_tags({"WindowWidth": "wide"})


def test_write_dicom_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        write_dicom(np.zeros((4, 4), np.float32), tmp_path / "x.dcm", {})
    with pytest.raises(ValueError, match="unknown DICOM keyword 'Foo'"):
        write_dicom(np.zeros((4, 4), np.uint16), tmp_path / "x.dcm", {"Foo": 1})
    with pytest.raises(ValueError, match="do not fit in 12 bits"):
        write_dicom(np.full((4, 4), 5000, np.uint16), tmp_path / "x.dcm", {}, bits_stored=12)
    with pytest.raises(ValueError, match="photometric"):
        write_dicom(np.zeros((4, 4), np.uint16), tmp_path / "x.dcm", {}, photometric="YBR")


def test_invalid_window_falls_back_with_a_warning(tmp_path):
    path = write_dicom(STORED_12BIT, tmp_path / "w0.dcm", {}, window=(100, 0), bits_stored=12)
    with pytest.warns(UserWarning, match="invalid VOI window"):
        image, _ = read_dicom(path)
    np.testing.assert_array_equal(image, [[0, 16004], [32007, 65535]])
