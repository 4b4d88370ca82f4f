"""Fuzzing of study ingestion: mutated DICOM files and mutated zips never raise anything but a
UserError subclass, and the message names the study, the archive or one of its files."""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import zipfile
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate

from edge.errors import UserError
from edge.phantom import make_phantom, write_dicom_series
from edge.pipeline import run_study
from tests.helpers.paths import SAMPLES

pytestmark = [pytest.mark.slow,   # hypothesis: hundreds of mutated studies and zips
              pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom warns about every mutated value it reads
ESCAPED = "ctedge-fuzz-escaped.dcm"
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Sample:
    """Mutated input and the list of mutations applied: a failure report shows the list, not the bytes."""

    def __init__(self, data: dict[str, bytes] | bytes, log: list[str]):
        self.data, self.log = data, log

    def __repr__(self) -> str:
        return f"Sample({'; '.join(self.log) or 'unmutated'})"


@functools.cache
def base_study(kind: str) -> dict[str, bytes]:
    """Clean input: a small synthetic phantom (explicit VR) or bundled real slices (JPEG lossless)."""
    if kind == "real":
        return {p.name: p.read_bytes() for p in sorted((SAMPLES / "CAP_cap002").glob("*.dcm"))[:5]}
    with tempfile.TemporaryDirectory() as tmp:
        return {p.name: p.read_bytes() for p in write_dicom_series(make_phantom(n_slices=8, size=64, seed=3), tmp)}


# -- DICOM mutations ---------------------------------------------------------------------------

TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
        "PhotometricInterpretation", "NumberOfFrames", "ImageOrientationPatient", "ImagePositionPatient",
        "SliceLocation", "InstanceNumber", "SliceThickness", "PixelSpacing", "RescaleSlope", "RescaleIntercept",
        "SeriesInstanceUID", "Modality", "ImageType", "SOPClassUID", "PixelData"]
BAD_VALUES = [b"", b"abc", b"nan", b"inf", b"-inf", b"1e400", b"0", b"-1", b"65535", b"1.5", b"\x00\x00", b"\xff\xff",
              b"0\\0\\0\\0\\0\\0", b"1\\0\\0\\0\\0\\1", b"1\\0", b"nan\\nan\\nan", b"1\\x\\0\\0\\1\\0"]
tag_values = st.one_of(st.sampled_from(BAD_VALUES), st.binary(max_size=12))
flips = st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=20)


def flip_bytes(data: bytes, where: list[tuple[float, int]]) -> bytes:
    """XOR the byte at each fractional position with the given mask."""
    out = bytearray(data)
    for frac, xor in where:
        out[int(frac * (len(out) - 1))] ^= xor
    return bytes(out)


def set_tag(data: bytes, keyword: str, value: bytes | None) -> bytes:
    """Replace (or delete, for None) one element with raw bytes, bypassing pydicom's value checks."""
    ds = pydicom.dcmread(io.BytesIO(data))
    tag = tag_for_keyword(keyword)
    if value is None or (keyword == "PixelData" and not value):  # pydicom cannot write empty pixel data
        ds.pop(tag, None)
    else:
        if keyword == "PixelData" and ds.file_meta.TransferSyntaxUID.is_compressed:
            value = encapsulate([value + b"\0" * (len(value) % 2)])  # a garbage codestream
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@st.composite
def mutate_file(draw, data: bytes) -> tuple[bytes, str]:
    """One byte-flip, truncation or tag mutation of one DICOM file, with its description."""
    kind = draw(st.sampled_from(["flip", "truncate", "tag", "tag"]))
    if kind == "flip":
        where = draw(flips)
        return flip_bytes(data, where), f"{len(where)} byte flips"
    if kind == "truncate":
        cut = int(draw(st.floats(0, 1, exclude_max=True)) * len(data))
        return data[:cut], f"truncated to {cut} bytes"
    keyword, value = draw(st.sampled_from(TAGS)), draw(st.none() | tag_values)
    return set_tag(data, keyword, value), f"{keyword}={'deleted' if value is None else value!r}"


@st.composite
def dicom_study(draw) -> Sample:
    """A clean study with one, a few or all of its files mutated."""
    kind = draw(st.sampled_from(["phantom", "real"]))
    files = dict(base_study(kind))
    names = sorted(files)
    targets = names if draw(st.booleans()) else draw(st.lists(st.sampled_from(names), min_size=1, max_size=3,
                                                               unique=True))
    sample = Sample(files, [f"{kind} study"])
    for name in targets:
        files[name], what = draw(mutate_file(files[name]))
        sample.log.append(f"{name}: {what}")
    return sample


# -- zip mutations -----------------------------------------------------------------------------

TRAVERSAL = [f"../{ESCAPED}", f"/{ESCAPED}", f"C:/{ESCAPED}", f"a/../../{ESCAPED}", f"..\\..\\{ESCAPED}",
             f"ok/../../../{ESCAPED}"]


def build_zip(files: dict[str, bytes], rename: dict[str, str], deflate: bool) -> bytes:
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(rename.get(name, name)), data, compress_type=method)
    return out.getvalue()


def _offsets(data: bytes, signature: bytes) -> list[int]:
    found, start = [], 0
    while (i := data.find(signature, start)) >= 0:
        found.append(i)
        start = i + 1
    return found


def patch_sizes(data: bytes, entry: int, declared: int, where: str) -> bytes:
    """Overwrite the declared compressed and uncompressed sizes of one member in its local and/or central header."""
    out = bytearray(data)
    headers = {"local": (b"PK\x03\x04", 18), "central": (b"PK\x01\x02", 20)}
    for name, (signature, field_at) in headers.items():
        offsets = _offsets(data, signature)
        if offsets and where in (name, "both"):
            at = offsets[entry % len(offsets)] + field_at
            out[at:at + 8] = struct.pack("<II", declared, declared)
    return bytes(out)


def corrupt_central_directory(data: bytes, where: list[tuple[float, int]]) -> bytes:
    """Flip bytes in the central directory and end record (found through the end record's offset field)."""
    start = struct.unpack_from("<I", data, data.rfind(b"PK\x05\x06") + 16)[0]
    return data[:start] + flip_bytes(data[start:], where)


@st.composite
def zip_study(draw) -> Sample:
    """A zip of a clean or mutated study, with traversal names, corrupt directory, patched sizes or flips."""
    study = draw(dicom_study()) if draw(st.booleans()) else Sample(dict(base_study("phantom")), ["phantom study"])
    rename = {}
    if draw(st.booleans()):
        victim = draw(st.sampled_from(sorted(study.data)))
        rename[victim] = draw(st.sampled_from(TRAVERSAL))
        study.log.append(f"member {victim} renamed {rename[victim]!r}")
    deflate = draw(st.booleans())
    data = build_zip(study.data, rename, deflate)
    study.log.append("deflated" if deflate else "stored")
    kind = draw(st.sampled_from(["none", "central", "sizes", "flip"]))
    if kind == "central":
        data = corrupt_central_directory(data, draw(flips))
        study.log.append("central directory corrupted")
    elif kind == "sizes":
        declared = draw(st.sampled_from([0, 1, 1000, 2**28, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
        entry, where = draw(st.integers(0, 50)), draw(st.sampled_from(["local", "central", "both"]))
        data = patch_sizes(data, entry, declared, where)
        study.log.append(f"member {entry} declares {declared} bytes in the {where} header(s)")
    elif kind == "flip":
        data = flip_bytes(data, draw(flips))
        study.log.append("bytes flipped")
    return Sample(data, study.log)


# -- the property ------------------------------------------------------------------------------

def assert_only_named_user_errors(source: Path | list[Path], names: set[str]) -> None:
    """Run the whole pipeline (placeholder classifier); a failure must be a UserError naming an input."""
    try:
        run_study(source)
    except UserError as exc:
        assert any(name in str(exc) for name in names), f"the message names no input: {exc}"
        assert exc.problem.strip()
    tmp = Path(tempfile.gettempdir())
    for escaped in (tmp / ESCAPED, tmp.parent / ESCAPED):
        assert not escaped.exists(), f"a zip member escaped to {escaped}"


@SETTINGS
@given(study=dicom_study(), as_list=st.booleans())
def test_mutated_dicom_studies_fail_only_with_named_user_errors(study: Sample, as_list: bool):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        folder.mkdir()
        for name, data in study.data.items():
            (folder / name).write_bytes(data)
        assert_only_named_user_errors(sorted(folder.iterdir()) if as_list else folder, set(study.data) | {"study"})


@SETTINGS
@given(study=zip_study())
def test_mutated_zips_fail_only_with_named_user_errors(study: Sample):
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "upload.zip"
        archive.write_bytes(study.data)
        assert_only_named_user_errors(archive, {"upload.zip"} | set(base_study("phantom")) | set(base_study("real")))


@SETTINGS
@given(kind=st.sampled_from(["phantom", "real"]), data=st.data())
def test_a_single_mutated_file_fails_only_with_a_named_user_error(kind: str, data: st.DataObject):
    files = base_study(kind)
    mutated, what = data.draw(mutate_file(files[sorted(files)[0]]), label="mutation")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slice.dcm"
        path.write_bytes(mutated)
        assert_only_named_user_errors(path, {"slice.dcm"})
