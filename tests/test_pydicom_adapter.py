"""The one place that reads pydicom's messages, pinned to the installed pydicom's real behaviour:
if an upgrade changes a message, these tests say which one (ingest would silently misclassify)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array

from edge.errors import CorruptFileError
from edge.ingest.dicom_files import decode_hu
from edge.ingest.pydicom_adapter import first_plugin, missing_decoder, truncation_warned
from tests.helpers.paths import SAMPLES

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


HAVE_GDCM = importlib.util.find_spec("gdcm") is not None
needs_gdcm = pytest.mark.skipif(not HAVE_GDCM, reason="python-gdcm is not installed")


def test_gdcm_is_tried_first_for_jpeg_lossless_only_and_the_first_plugin_is_reported():
    lossless = "gdcm" if HAVE_GDCM else "pylibjpeg"
    assert [first_plugin(s) for s in (uid.JPEGLossless, uid.JPEGLosslessSV1)] == [lossless, lossless]
    for syntax in (uid.JPEGBaseline8Bit, uid.JPEGLSLossless, uid.JPEG2000Lossless, uid.RLELossless):
        assert first_plugin(syntax) == "pylibjpeg", f"{syntax.name}: pylibjpeg stays first (gdcm unmeasured there)"
    assert first_plugin(uid.ExplicitVRLittleEndian) == "native" and first_plugin(uid.MPEG2MPML) == "none"


@pytest.mark.slow
@needs_gdcm
@pytest.mark.shared_data
def test_gdcm_and_pylibjpeg_decode_a_real_study_bit_identically(shared_data):
    paths = sorted((shared_data / "Normal_normal001").glob("*.dcm"))
    assert len(paths) > 100
    for path in paths:
        by_gdcm, by_pylibjpeg = (pixel_array(path, decoding_plugin=p) for p in ("gdcm", "pylibjpeg"))
        assert by_gdcm.dtype == by_pylibjpeg.dtype and np.array_equal(by_gdcm, by_pylibjpeg), path.name


def _with_stream(tmp_path, source: Path, change) -> Path:
    """A copy of ``source`` whose one JPEG frame is ``change(frame)``."""
    ds = pydicom.dcmread(source)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([change(frame)])
    ds.save_as(tmp_path / source.name)
    return tmp_path / source.name


@needs_gdcm
def test_a_stream_gdcm_rejects_is_decoded_by_pylibjpeg_instead_without_logging_gdcm_s_failure(tmp_path, caplog):
    source = SAMPLES / "CAP_cap002" / "IM0001.dcm"
    no_eoi = _with_stream(tmp_path, source, lambda f: f.rstrip(b"\x00").removesuffix(b"\xff\xd9"))
    with pytest.raises(Exception, match="gdcm"):
        pixel_array(no_eoi, decoding_plugin="gdcm")   # gdcm alone refuses this stream without its end marker
    expected = decode_hu(pydicom.dcmread(source), source)
    caplog.clear()
    assert np.array_equal(decode_hu(pydicom.dcmread(no_eoi), no_eoi), expected)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")], "pydicom's traceback for gdcm is silenced"


def test_a_stream_every_plugin_rejects_is_a_corrupt_file_naming_it(tmp_path):
    damaged = _with_stream(tmp_path, SOURCE, lambda f: b"\xff\xd8" + b"\x13" * 300)
    with pytest.raises(CorruptFileError) as err:
        decode_hu(pydicom.dcmread(damaged), damaged)
    message = str(err.value)
    assert message.startswith(f"{damaged}: pixel data cannot be decoded") and "pylibjpeg:" in message
    if HAVE_GDCM:
        assert message.index("gdcm:") < message.index("pylibjpeg:"), "gdcm first, pylibjpeg as the fallback"
