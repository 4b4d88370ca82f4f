"""Studies given as image slices: 8-bit (lung-windowed) and 16-bit (HU + 1024, as in COVID-CTset)."""

import cv2
import numpy as np
import pytest

from edge.errors import CorruptFileError, MixedSizesError, TooFewSlicesError
from edge.ingest import load_study
from edge.pipeline import run_study
from edge.preprocess.window import lung_window
from tests.helpers.paths import SAMPLES


@pytest.fixture(scope="module")
def hu():
    return load_study(SAMPLES / "COVID-19_P002").hu


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16_bit_slices_give_back_the_hu(tmp_path, hu, ext):
    for i, s in enumerate(hu):
        cv2.imwrite(str(tmp_path / f"slice_{i}{ext}"), (s.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16))
    v = load_study(tmp_path)
    assert v.hu_exact and v.position_mm is None
    assert np.array_equal(v.hu, hu), "slice_2 must sort before slice_10 and values map back exactly"
    assert any("HU + 1024" in w for w in v.warnings)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_8_bit_slices_are_read_through_the_lung_window(tmp_path, hu, ext):
    for i, s in enumerate(hu):
        cv2.imwrite(str(tmp_path / f"img{i:03d}{ext}"), lung_window(s))
    v = load_study(tmp_path)
    assert not v.hu_exact
    inside = (hu > -1350) & (hu < 150)
    tolerance = 4 if ext == ".png" else 60  # one grey level is ~6 HU; JPEG adds its own loss
    assert np.median(np.abs(v.hu[inside] - hu[inside])) <= tolerance
    assert any("lung window" in w for w in v.warnings)
    assert run_study(tmp_path).to_dict()["input"]["hu_exact"] is False


def test_single_image_is_refused(tmp_path, hu):
    cv2.imwrite(str(tmp_path / "only.png"), lung_window(hu[0]))
    with pytest.raises(TooFewSlicesError, match="only.png"):
        load_study(tmp_path)


def test_mixed_image_sizes_are_refused(tmp_path, hu):
    cv2.imwrite(str(tmp_path / "a.png"), lung_window(hu[0]))
    cv2.imwrite(str(tmp_path / "b.png"), lung_window(hu[1])[:256])
    with pytest.raises(MixedSizesError, match="b.png"):
        load_study(tmp_path)


def test_undecodable_image_is_skipped_and_named(tmp_path, hu):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"s{i}.png"), lung_window(hu[i]))
    (tmp_path / "s3.png").write_bytes(b"\x89PNG broken")
    v = load_study(tmp_path)
    assert v.n_slices == 3 and any("s3.png: cannot be decoded" in w for w in v.warnings)


def test_only_undecodable_images_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "b.png").write_bytes(b"\x89PNG broken too")
    with pytest.raises(CorruptFileError, match="a.png: cannot be decoded"):
        load_study(tmp_path)
