"""The one place that reads pydicom's messages, pinned to the installed pydicom's real behaviour:
if an upgrade changes a message, these tests say which one (ingest would silently misclassify)."""

from __future__ import annotations

import warnings

import pydicom
import pytest

from edge.ingest.pydicom_adapter import missing_decoder, truncation_warned
from tests.conftest import SAMPLES

SOURCE = sorted((SAMPLES / "COVID-19_P002").glob("*.dcm"))[0]


def _read_warnings(path) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pydicom.dcmread(path, defer_size="64 KB")
    return caught


def test_truncation_is_recognised_from_pydicom_s_warning(tmp_path):
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(SOURCE.read_bytes()[:60_000])
    assert truncation_warned(_read_warnings(cut))
    assert not truncation_warned(_read_warnings(SOURCE))


def _pixel_error(ds: pydicom.Dataset) -> Exception:
    with pytest.raises(Exception) as err:
        ds.pixel_array  # noqa: B018 - decoding is the point
    return err.value


def test_a_missing_decoder_is_told_apart_from_damaged_pixel_data():
    ds = pydicom.dcmread(SOURCE)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"       # MPEG2: no installed decoder
    assert missing_decoder(_pixel_error(ds))
    damaged = pydicom.dcmread(SOURCE)          # JPEG lossless whose stream every installed plugin rejects
    damaged.PixelData = damaged.PixelData[:16] + b"\xff\xd8" + b"\x13" * 300
    error = _pixel_error(damaged)
    assert "plugins" in str(error) and not missing_decoder(error), "a damaged stream is not a missing decoder"
