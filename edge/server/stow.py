"""DICOMweb STOW-RS on the server: ``POST /dicom-web/studies`` (the API bearer token), for PACS that
push over HTTP. Each ``application/dicom`` part is checked and committed to ``dicom.inbox`` exactly as
a C-STORE would be; the answer lists stored and failed instances (PS3.18 10.5): 200 all stored,
202 some failed, 409 none stored, 400 no parts (or a part header over 16 KB), 413 too many parts,
415 not ``multipart/related; type="application/dicom"``.

The body is read in ``STOW_CHUNK_BYTES`` chunks and each part handled as soon as it ends, so at most
one part (``MAX_INSTANCE_BYTES``; the rest of a larger one is discarded as it arrives) is held at a
time; a request with more than ``MAX_STOW_PARTS`` parts is answered 413 at the next one. One log line
sums up each request (docs/security-bounds.md)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import IO

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.http import parse_options_header

from edge import limits
from edge.dicomnet.receiver import (CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, Receiver, check_instance,
                                     log)
from edge.server.auth import require_token
from edge.server.errors import json_error
from edge.untrusted import printable

bp = Blueprint("stow", __name__)
RETRIEVE_URL, REFERENCED, FAILED, FAILURE_REASON = "00081190", "00081199", "00081198", "00081197"
SOP_CLASS, SOP_INSTANCE = "00081150", "00081155"


bp.before_request(require_token)


class MultipartError(ValueError):
    """A multipart body that cannot be split into parts (a part header block too long)."""


class TooManyParts(Exception):
    """More than ``MAX_STOW_PARTS`` parts in one request."""


@bp.post("/dicom-web/studies")
def store_instances() -> Response:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if mimetype != "multipart/related" or options.get("type", "").lower() != "application/dicom" or not boundary:
        return json_error(415, 'send multipart/related; type="application/dicom" with a boundary')
    receiver = current_app.extensions["ctedge"]["dicom"].receiver
    stored: list[dict] = []
    failed: list[dict] = []
    reasons: Counter[str] = Counter()
    problem: tuple[int, str] | None = None
    try:
        for part in iter_parts(request.stream, boundary.encode(), limits.MAX_INSTANCE_BYTES, limits.MAX_STOW_PARTS):
            ref, reason, status = _store(receiver, part)
            if reason is None:
                stored.append(ref)
            else:
                reasons[reason] += 1
                failed.append(ref | {FAILURE_REASON: {"vr": "US", "Value": [status]}})
    except TooManyParts:
        problem = 413, (f"more than {limits.MAX_STOW_PARTS} parts in one request; the first {limits.MAX_STOW_PARTS} "
                        f"were processed ({len(stored)} stored): send the rest in another request")
    except MultipartError as exc:
        problem = 400, f"the multipart body cannot be read: {exc}"
    if not (stored or failed or problem):
        problem = 400, "the body has no parts: none of its lines is the boundary of the Content-Type"
    log.log(logging.WARNING if failed or problem else logging.INFO, "STOW-RS request: %d instance(s) stored, %d refused%s%s",
            len(stored), len(failed), "".join(f"; {n} x {r}" for r, n in reasons.most_common(3)),
            f"; {problem[1]}" if problem else "")
    if problem:
        return json_error(*problem)
    body = {}
    if stored:
        body[REFERENCED] = {"vr": "SQ", "Value": stored}
    if failed:
        body[FAILED] = {"vr": "SQ", "Value": failed}
    answer = jsonify(body)
    answer.mimetype = "application/dicom+json"
    answer.status_code = 200 if not failed else 202 if stored else 409
    return answer


def _store(receiver: Receiver, part: bytes | None) -> tuple[dict, str | None, int]:
    """Check and commit one part: (its reference, why it was refused or None, the failure status)."""
    if part is None:
        return {}, f"instance larger than {limits.MAX_INSTANCE_BYTES // 2**20} MB", OUT_OF_RESOURCES
    try:
        ds = check_instance(part)
    except ValueError as exc:
        return {}, printable(str(exc))[:120], CANNOT_UNDERSTAND
    ref = {SOP_CLASS: {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
           SOP_INSTANCE: {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}}
    if refusal := receiver.refusal(ds.SOPClassUID):
        return ref, refusal, SOP_CLASS_NOT_SUPPORTED
    try:
        receiver.store(ds, part)
    except OSError as exc:
        return ref, f"cannot store in {receiver.inbox.root}: {exc.strerror}", OUT_OF_RESOURCES
    return ref, None, 0


def iter_parts(stream: IO[bytes], boundary: bytes, max_part_bytes: int, max_parts: int,
               chunk: int = limits.STOW_CHUNK_BYTES) -> Iterator[bytes | None]:
    """The bodies of the parts of a multipart message read from ``stream`` in ``chunk``-byte reads,
    each yielded as soon as it ends (part headers dropped); None for a part longer than
    ``max_part_bytes``, whose bytes were dropped as they came. Raises TooManyParts before the
    ``max_parts + 1``-th part, MultipartError for a part header block over MAX_PART_HEADER_BYTES."""
    delimiter = b"--" + boundary
    buffer = bytearray()
    eof = False

    def fill() -> bool:
        nonlocal eof
        data = b"" if eof else stream.read(chunk)
        eof = not data
        buffer.extend(data)
        return bool(data)

    # the preamble, up to the first delimiter
    while (at := buffer.find(delimiter)) < 0:
        del buffer[:max(0, len(buffer) - len(delimiter))]
        if not fill():
            return
    del buffer[:at + len(delimiter)]
    count = 0
    while True:  # at the end of a delimiter: "--" closes, else a line end, headers, a blank line, the content
        while len(buffer) < 2 and fill():
            pass
        if buffer[:2] == b"--" or not buffer:
            return
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > limits.MAX_PART_HEADER_BYTES:
                raise MultipartError(f"a part's headers are longer than {limits.MAX_PART_HEADER_BYTES} bytes")
            if not fill():
                return
        if end > limits.MAX_PART_HEADER_BYTES:
            raise MultipartError(f"a part's headers are longer than {limits.MAX_PART_HEADER_BYTES} bytes")
        count += 1
        if count > max_parts:
            raise TooManyParts()
        del buffer[:end + 4]
        content, size, closing = bytearray(), 0, b"\r\n" + delimiter
        while (at := buffer.find(closing)) < 0:
            keep = len(closing) - 1
            if len(buffer) > keep:
                size += len(buffer) - keep
                if size <= max_part_bytes:
                    content += buffer[:-keep]
                else:
                    content.clear()
                del buffer[:-keep]
            if not fill():  # the body ends inside the part: what came is checked (and refused as truncated)
                at = len(buffer)
                break
        size += at
        if size <= max_part_bytes:
            content += buffer[:at]
        del buffer[:at + len(closing)]
        yield bytes(content) if size <= max_part_bytes else None
        if eof and not buffer:
            return
