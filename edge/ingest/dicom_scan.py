"""A bounded pre-pass over a DICOM file's bytes, before pydicom parses it (docs/security-bounds.md).

pydicom builds a Python object for every data element, sequence item and command-group element
it meets, and inflates a Deflated Explicit VR Little Endian data set whole; a few MB of crafted
bytes (millions of tiny elements, sequences nested thousands deep, a deflate bomb) cost gigabytes
and minutes there. :func:`check_structure` walks the same element stream here without building
anything: it counts every element and item at every depth (``MAX_TOTAL_ELEMENTS``), the nesting
of sequences (``MAX_SEQUENCE_DEPTH``) and the inflated size of a deflated data set
(``MAX_INFLATED_BYTES``, ``MAX_INFLATE_RATIO``), skipping values by seeking. A malformed stream is
left to pydicom, which reports it: only the bounds are checked here.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from edge import limits
from edge.errors import CorruptFileError, FileTooLargeError

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE, EXPLICIT_BE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


class TooManyElementsError(FileTooLargeError):
    """A data set with more data elements (at any depth) than the bounds allow, or sequences nested too deep."""


class _File:
    """Forward reads over a seekable file, with the position since the start of the data set."""

    def __init__(self, fp: BinaryIO):
        self.fp, self.pos = fp, 0

    def read(self, n: int) -> bytes:
        data = self.fp.read(n)
        self.pos += len(data)
        return data

    def peek(self, n: int) -> bytes:
        data = self.fp.read(n)
        self.fp.seek(-len(data), 1)
        return data

    def skip(self, n: int) -> None:
        self.fp.seek(n, 1)
        self.pos += n


class _Inflated(_File):
    """Forward reads over a deflated data set, inflated in chunks of at most 1 MB and never more than ``limit`` bytes."""

    def __init__(self, fp: BinaryIO, path: Path):
        super().__init__(fp)
        start = fp.tell()
        deflated = fp.seek(0, 2) - start
        fp.seek(start)
        self.path, self.deflated, self.inflated, self.buffer = path, deflated, 0, bytearray()
        self.limit = min(limits.MAX_INFLATED_BYTES, max(limits.MAX_INFLATE_RATIO * deflated, limits.MIN_INFLATE_ALLOWANCE))
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)

    def _more(self) -> bool:
        if self.inflater.eof or not (chunk := self.inflater.unconsumed_tail or self.fp.read(2**16)):
            return False
        try:
            data = self.inflater.decompress(chunk, 2**20)
        except zlib.error as exc:
            raise CorruptFileError(self.path, f"the deflated data set cannot be inflated ({exc})") from exc
        self.inflated += len(data)
        if self.inflated > self.limit:
            raise FileTooLargeError(self.path, f"the deflated data set ({self.deflated} bytes) inflates to more than "
                                               f"{self.limit} bytes (at most {limits.MAX_INFLATE_RATIO}x, "
                                               f"{limits.MAX_INFLATED_BYTES // 2**20} MB); not read")
        self.buffer += data
        return True

    def read(self, n: int) -> bytes:
        while len(self.buffer) < n and self._more():
            pass
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        self.pos += len(data)
        return data

    def peek(self, n: int) -> bytes:
        while len(self.buffer) < n and self._more():
            pass
        return bytes(self.buffer[:n])

    def skip(self, n: int) -> None:
        while n > 0:
            if not self.buffer and not self._more():
                return
            step = min(n, len(self.buffer))
            del self.buffer[:step]
            self.pos += step
            n -= step

    def drain(self) -> None:
        """Inflate the rest (pydicom inflates it all): refused over the limit."""
        while self._more():
            self.buffer.clear()


def check_structure(fp: BinaryIO, path: Path) -> None:
    """Refuse (TooManyElementsError, FileTooLargeError naming ``path``) a DICOM file whose element
    stream has more than MAX_TOTAL_ELEMENTS elements and items in all, sequences nested deeper than
    MAX_SEQUENCE_DEPTH, or a deflated data set inflating past its limit. ``fp`` is read from its
    start and left there; bytes that are not DICOM pass (pydicom refuses them next)."""
    fp.seek(0)
    try:
        syntax = _skip_meta(fp, path)
        reader = _Inflated(fp, path) if syntax == DEFLATED else _File(fp)
        if syntax is None:   # no file meta: guess as pydicom does, from the first element
            vr = reader.peek(6)[4:6]
            implicit = not (vr.isalpha() and vr.isupper())
        else:
            implicit = syntax == IMPLICIT_LE
        _count(reader, implicit, syntax != EXPLICIT_BE, path)
        if isinstance(reader, _Inflated):
            reader.drain()
    finally:
        fp.seek(0)


def _skip_meta(fp: BinaryIO, path: Path) -> str | None:
    """Skip the preamble and the file meta group (explicit VR little endian, counted against
    MAX_TOTAL_ELEMENTS with the rest); return the transfer syntax it names (None without one)."""
    head = fp.read(132)
    if head[128:132] != b"DICM":
        fp.seek(0)
    syntax = None
    for _ in range(limits.MAX_TOTAL_ELEMENTS):
        start = fp.tell()
        header = fp.read(8)
        if len(header) < 8 or struct.unpack("<H", header[:2])[0] != 0x0002:
            fp.seek(start)
            return syntax
        vr = header[4:6]
        if vr in LONG_VRS:
            if len(extra := fp.read(4)) < 4:
                return syntax
            length = struct.unpack("<L", extra)[0]
        else:
            length = struct.unpack("<H", header[6:8])[0]
        if header[:4] == b"\x02\x00\x10\x00":   # (0002,0010) Transfer Syntax UID
            syntax = fp.read(min(length, 256)).rstrip(b"\x00 ").decode("ascii", "replace")
        else:
            fp.seek(length, 1)
    raise TooManyElementsError(path, f"more than {limits.MAX_TOTAL_ELEMENTS} file meta elements; not read")


def _count(reader: _File, implicit: bool, little: bool, path: Path) -> None:
    """Walk the element stream, counting elements and items and the depth of sequences."""
    tag_format, long_format, short_format = ("<HH", "<L", "<H") if little else (">HH", ">L", ">H")
    stack: list[tuple[int | None, str, bool]] = []   # (end position or None, "seq" | "item" | "frag", implicit)
    depth = count = 0
    while True:
        while stack and (end := stack[-1][0]) is not None and reader.pos >= end:
            depth -= stack.pop()[1] != "item"
        head = reader.read(8)
        if len(head) < 8:
            return
        count += 1
        if count > limits.MAX_TOTAL_ELEMENTS:
            raise TooManyElementsError(path, f"more than {limits.MAX_TOTAL_ELEMENTS} data elements in all "
                                             "(sequences included); not read")
        group, element = struct.unpack(tag_format, head[:4])
        tag, level_implicit = group << 16 | element, stack[-1][2] if stack else implicit
        if group == 0xFFFE:
            length = struct.unpack(long_format, head[4:])[0]
            if tag == ITEM and stack and stack[-1][1] == "frag":
                if length == UNDEFINED:
                    return
                reader.skip(length)
            elif tag == ITEM:
                stack.append((None if length == UNDEFINED else reader.pos + length, "item", level_implicit))
            elif tag == ITEM_END and stack and stack[-1][1] == "item":
                stack.pop()
            elif tag == SEQUENCE_END:
                while stack and stack[-1][1] == "item":
                    stack.pop()
                if stack:
                    stack.pop()
                    depth -= 1
            continue
        vr = None if level_implicit else head[4:6]
        if vr is None:
            length = struct.unpack(long_format, head[4:])[0]
        elif vr in LONG_VRS:
            if len(extra := reader.read(4)) < 4:
                return
            length = struct.unpack(long_format, extra)[0]
        else:
            length = struct.unpack(short_format, head[6:])[0]
        if length == UNDEFINED:
            kind = "seq" if vr in (None, b"SQ", b"UN") else "frag"   # UN of undefined length: an implicit VR sequence
            nested: tuple[int | None, str, bool] = (None, kind, level_implicit or vr == b"UN")
        elif vr == b"SQ" or (vr is None and length >= 8 and reader.peek(4) == struct.pack(tag_format, 0xFFFE, 0xE000)):
            nested = (reader.pos + length, "seq", level_implicit)
        else:
            reader.skip(length)
            continue
        depth += 1
        if depth > limits.MAX_SEQUENCE_DEPTH:
            raise TooManyElementsError(path, f"sequences nested more than {limits.MAX_SEQUENCE_DEPTH} deep; not read")
        stack.append(nested)
