"""The JSON API (``/api/v1``, bearer token) and ``/health``. Described in ``openapi.yaml``."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, current_app, jsonify, request, send_file, url_for
from werkzeug.datastructures import FileStorage

from edge import __version__
from edge.server.errors import json_error
from edge.server.auth import require_token, token_problem
from edge.server.jobs import JobQueue, QueueFull, StudyStore
from edge.server.uploads import UploadError, UploadPolicy, receive_study

bp = Blueprint("api", __name__)
OPENAPI = Path(__file__).with_name("openapi.yaml")
PUBLIC = {"api.health", "api.openapi"}
RETRY_AFTER_S = 10


def store() -> StudyStore:
    return current_app.extensions["ctedge"]["store"]


def jobs() -> JobQueue:
    return current_app.extensions["ctedge"]["jobs"]


def upload_policy() -> UploadPolicy:
    return current_app.extensions["ctedge"]["uploads"]


@bp.before_request
def _require_token() -> Response | None:
    return None if request.endpoint in PUBLIC else require_token()


@bp.post("/api/v1/studies")
def submit() -> Response:
    if request.mimetype in ("application/zip", "application/x-zip-compressed"):
        files = [FileStorage(request.stream, filename="study.zip")]
    else:
        files = [f for key in request.files for f in request.files.getlist(key)]
    try:
        study_id = receive_study(files, store(), jobs(), upload_policy())
    except UploadError as exc:
        return json_error(exc.status, str(exc))
    except QueueFull:
        return json_error(503, "the server is busy: too many studies are waiting; retry later",
                          **{"Retry-After": str(RETRY_AFTER_S)})
    response = jsonify(id=study_id, status="queued", url=url_for("api.study", study_id=study_id))
    response.status_code = 202
    response.headers["Location"] = response.json["url"]  # type: ignore[index]
    return response


@bp.get("/api/v1/studies/<study_id>")
def study(study_id: str) -> Response:
    state = store().status(study_id) or abort(404, f"no study {study_id!r}")
    body = dict(state)
    if state["status"] == "queued":
        body["position"] = jobs().position(study_id)
    if state["status"] == "done" and (result := store().result(study_id)):
        for h in result.get("heatmaps", []):
            h["url"] = url_for("api.heatmap", study_id=study_id, n=h["n"])
        body["result"] = result
    return jsonify(body)


@bp.get("/api/v1/studies/<study_id>/heatmaps/<int:n>.png")
def heatmap(study_id: str, n: int) -> Response:
    return send_heatmap(study_id, n)


def send_heatmap(study_id: str, n: int) -> Response:
    """Heatmap overlay ``n`` of a study (the page's and the API's route both answer with it), or 404."""
    return send_file(study_file(study_id, f"heatmaps/{n}.png"), mimetype="image/png")


def study_file(study_id: str, name: str) -> Path:
    """A file of a study's result folder (written by the engine), or 404."""
    if store().status(study_id) is None:
        abort(404, f"no study {study_id!r}")
    path = store().folder(study_id) / name
    if not path.is_file():
        abort(404, f"study {study_id} has no {name}")
    return path


@bp.get("/api/v1/model")
def model() -> Response:
    profile = current_app.config["PROFILE"]
    engine = current_app.extensions["ctedge"]["engine"]
    return jsonify(engine.info.to_dict() | {"profile": profile.name,
                                            "by_modality": {m: e.info.to_dict() for m, e in engine.routes.items()}})


@bp.get("/health")
def health() -> Response:
    """Liveness for anyone (status, version); the queue and the PACS sends (study UIDs, the PACS's
    address and error texts) only with the API token."""
    stats = jobs().stats()
    ok = stats["workers"] > 0
    body: dict = {"status": "ok" if ok else "no worker running", "version": __version__}
    if token_problem(current_app.config, request.headers.get("Authorization", "")) is None:
        dicom = current_app.extensions["ctedge"].get("dicom")
        body |= {"queue": stats} | ({"dicom_send": dicom.outbox.status()} if dicom else {})
    response = jsonify(body)
    response.status_code = 200 if ok else 503
    return response


@bp.get("/api/v1/openapi.yaml")
def openapi() -> Response:
    return send_file(OPENAPI, mimetype="application/yaml")
