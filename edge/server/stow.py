"""DICOMweb STOW-RS on the server: ``POST /dicom-web/studies`` (the API bearer token), for PACS that
push over HTTP. Each ``application/dicom`` part is checked and committed to ``dicom.inbox`` exactly as
a C-STORE would be; the answer lists stored and failed instances (PS3.18 10.5): 200 all stored,
202 some failed, 409 none stored, 415 not ``multipart/related; type="application/dicom"``."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.http import parse_options_header

from edge.dicomnet.receiver import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SOP_CLASS_NOT_SUPPORTED, check_instance, log
from edge.server.errors import json_error
from edge.server.auth import require_token

bp = Blueprint("stow", __name__)
RETRIEVE_URL, REFERENCED, FAILED, FAILURE_REASON = "00081190", "00081199", "00081198", "00081197"
SOP_CLASS, SOP_INSTANCE = "00081150", "00081155"


bp.before_request(require_token)


@bp.post("/dicom-web/studies")
def store_instances() -> Response:
    mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
    boundary = options.get("boundary", "")
    if mimetype != "multipart/related" or options.get("type", "").lower() != "application/dicom" or not boundary:
        return json_error(415, 'send multipart/related; type="application/dicom" with a boundary')
    receiver = current_app.extensions["ctedge"]["dicom"].receiver
    inbox = receiver.inbox
    stored: list[dict] = []
    failed: list[dict] = []
    for n, part in enumerate(split_parts(request.get_data(), boundary.encode()), start=1):
        try:
            ds = check_instance(part)
        except ValueError as exc:
            log.warning("STOW-RS part %d refused: %s", n, exc)
            failed.append({FAILURE_REASON: {"vr": "US", "Value": [CANNOT_UNDERSTAND]}})
            continue
        ref = {SOP_CLASS: {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
               SOP_INSTANCE: {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}}
        if refusal := receiver.refusal(ds.SOPClassUID):
            log.warning("STOW-RS part %d refused: %s", n, refusal)
            failed.append(ref | {FAILURE_REASON: {"vr": "US", "Value": [SOP_CLASS_NOT_SUPPORTED]}})
            continue
        try:
            inbox.commit(ds.StudyInstanceUID, ds.SOPInstanceUID, part)
        except OSError as exc:
            log.error("STOW-RS: cannot store an instance in %s: %s", inbox.root, exc.strerror)
            failed.append(ref | {FAILURE_REASON: {"vr": "US", "Value": [OUT_OF_RESOURCES]}})
            continue
        stored.append(ref)
    body = {}
    if stored:
        body[REFERENCED] = {"vr": "SQ", "Value": stored}
    if failed:
        body[FAILED] = {"vr": "SQ", "Value": failed}
    response = jsonify(body)
    response.mimetype = "application/dicom+json"
    response.status_code = 200 if not failed else 202 if stored else 409
    return response


def split_parts(body: bytes, boundary: bytes) -> list[bytes]:
    """The bodies of the parts of a multipart message (part headers dropped)."""
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        _, _, content = chunk.partition(b"\r\n\r\n")
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts
