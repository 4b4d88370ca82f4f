"""The clinician pages: login, upload form, processing status, result, history."""

from __future__ import annotations

import math
from urllib.parse import urlsplit

from flask import (Blueprint, abort, current_app, redirect, render_template, request, send_file, session,
                   url_for)
from werkzeug.wrappers import Response

from edge import CLASSES
from edge.card import MODALITY_TERMS
from edge.preprocess.window import DISPLAY_WINDOWS
from edge.profile import viewer_link
from edge.report import dicom_date, dicom_time, local_time, slice_numbers, terms_of
from edge.result import ResultDoc
from edge.server.api import RETRY_AFTER_S, jobs, send_heatmap, store, study_file, upload_policy
from edge.server.auth import check_csrf, check_login, csrf_token, read_users, session_user
from edge.server.jobs import REVIEW_MARKS, STAGES, STATES, QueueFull
from edge.server.sessions import Sessions
from edge.server.throttle import LoginThrottle
from edge.server.uploads import UploadError, receive_study
from edge.server.worklist import SORTS, to_csv, unread, worklist

bp = Blueprint("ui", __name__)
REPORT_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HISTORY_LIMIT = 500


def sessions() -> Sessions:
    return current_app.extensions["ctedge"]["sessions"]


def throttle() -> LoginThrottle:
    return current_app.extensions["ctedge"]["throttle"]


@bp.before_request
def _login_and_csrf() -> Response | None:
    if current_app.config["LOGIN_REQUIRED"] and request.endpoint != "ui.login" and not _logged_in():
        session.clear()
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    if request.method == "POST":
        check_csrf()
    return None


def _logged_in() -> bool:
    """True when the cookie's session is open and its user's line in the users file is unchanged."""
    return session_user(current_app, session) is not None


def safe_target(target: str) -> str:
    """``target`` when it is a path on this site, else the upload page (no open redirect)."""
    parts = urlsplit(target)
    on_site = (target.startswith("/") and not target.startswith("//") and not parts.scheme
               and not parts.netloc and all(c.isprintable() and c not in " \\" for c in target))
    return target if on_site else url_for("ui.index")


@bp.app_context_processor
def _template_globals() -> dict:
    routes = current_app.extensions["ctedge"]["engine"].routes   # the model of each modality this device reads
    return {"csrf_token": csrf_token, "models": [e.info for e in routes.values()],
            "reads": {m: MODALITY_TERMS[m].name for m in routes},
            "user": session.get("user"), "login_required": current_app.config["LOGIN_REQUIRED"],
            "viewer_link": lambda study: viewer_link(current_app.config["PROFILE"].server.viewer_url, study or {})}


@bp.app_template_filter("localtime")
def _localtime(value: str | None) -> str:
    return local_time(value, current_app.config["PROFILE"].server.timezone)


bp.add_app_template_filter(dicom_date, "dicom_date")
bp.add_app_template_filter(dicom_time, "dicom_time")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | tuple[str, int] | tuple[str, int, dict[str, str]] | str:
    target = safe_target(request.args.get("next", ""))
    if request.method == "GET":
        return render_template("login.html", next=target)
    name, password = request.form.get("user", ""), request.form.get("password", "")
    address = request.remote_addr or "unknown"
    if wait := throttle().wait(name, address):
        seconds = math.ceil(wait)
        return (render_template("login.html", next=target, error=f"too many failed logins: try again in {seconds} s"),
                429, {"Retry-After": str(seconds)})
    if not check_login(current_app.config["USERS_FILE"], name, password):
        throttle().failed(name, address)
        return render_template("login.html", next=target, error="wrong user name or password"), 401
    throttle().succeeded(name)
    sessions().end(session.get("sid"))
    session.clear()
    session.permanent = True
    session["user"] = name
    session["sid"] = sessions().start(name, read_users(current_app.config["USERS_FILE"])[name])
    return redirect(target, 303)


@bp.post("/logout")
def logout() -> Response:
    sessions().end(session.get("sid"))
    session.clear()
    return redirect(url_for("ui.login"), 303)


@bp.get("/")
def index() -> str:
    return render_template("upload.html")


@bp.post("/studies")
def upload() -> Response | tuple[str, int, dict]:
    try:
        study_id = receive_study(request.files.getlist("files"), store(), jobs(), upload_policy())
    except UploadError as exc:
        return render_template("upload.html", error=str(exc)), exc.status, {}
    except QueueFull:
        return (render_template("upload.html", error="The server is busy: too many studies are waiting. "
                                                     f"Try again in {RETRY_AFTER_S} seconds."),
                503, {"Retry-After": str(RETRY_AFTER_S)})
    return redirect(url_for("ui.study", study_id=study_id), 303)


@bp.get("/studies/<study_id>")
def study(study_id: str) -> str:
    state = store().status(study_id) or abort(404, f"no study {study_id!r}")
    if state["status"] in ("queued", "running"):
        return render_template("status.html", state=state, position=jobs().position(study_id), stages=STAGES,
                               eta=jobs().eta(state))
    result = store().result(study_id) if state["status"] == "done" else None
    return render_template("result.html", state=state, result=result, terms=terms_of(result) if result else None,
                           classes=result.get("classes", CLASSES) if result else CLASSES,
                           numbers=slice_numbers(result) if result else [], viewer=viewer_data(result) if result else None,
                           marks=REVIEW_MARKS)


def viewer_data(doc: ResultDoc) -> dict:
    """What the page's viewer (static/viewer.js) needs of a result: each slice's number and z, which
    were used, the window presets written, and the heatmap overlay of each slice that has one."""
    z = {s["index"]: s.get("z") for s in doc.get("slices_used", []) + doc.get("slices_dropped", [])}
    overlays: dict[str, int] = {}
    for h in doc.get("heatmaps", []):
        if "overlay" in h:
            overlays.setdefault(str(h["slice_index"]), h["n"])   # the first (largest share) of a slice's heatmaps
    return {"count": len(doc.get("slice_png", [])), "numbers": slice_numbers(doc),
            "z": [z.get(i) for i in range(doc["n_slices_read"])],
            "used": [s["index"] for s in doc.get("slices_used", [])],
            "windows": ["lung", *doc.get("slice_png_windows", {})],
            "overlays": overlays, "start": doc["heatmaps"][0]["slice_index"] if overlays else len(doc.get("slice_png", [])) // 2}


@bp.get("/studies/<study_id>/heatmaps/<int:n>.png")
def heatmap(study_id: str, n: int) -> Response:
    return send_heatmap(study_id, n)


@bp.get("/studies/<study_id>/heatmaps/<int:n>-map.png")
def heatmap_layer(study_id: str, n: int) -> Response:
    """Heatmap ``n`` alone, transparent where cold: the viewer's overlay."""
    return send_file(study_file(study_id, f"heatmaps/{n}-map.png"), mimetype="image/png")


@bp.get("/studies/<study_id>/slices/<int:index>.png")
def slice_image(study_id: str, index: int) -> Response:
    return send_file(study_file(study_id, f"slices/{index:04d}.png"), mimetype="image/png")


@bp.get("/studies/<study_id>/slices/<window>/<int:index>.png")
def slice_window(study_id: str, window: str, index: int) -> Response:
    """A slice in a window preset other than the lung window (``edge.preprocess.window.DISPLAY_WINDOWS``)."""
    if window not in DISPLAY_WINDOWS:
        abort(404, f"no window {window!r}")
    return send_file(study_file(study_id, f"slices/{window}/{index:04d}.png"), mimetype="image/png")


@bp.get("/studies/<study_id>/report.html")
def report(study_id: str) -> Response:
    response = send_file(study_file(study_id, "report.html"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    return response


def _worklist() -> tuple[list, dict[str, str]]:
    """The newest ``HISTORY_LIMIT`` studies as the query string sorts and filters them, and that query."""
    query = {"sort": request.args.get("sort", "triage"), "verdict": request.args.get("verdict", ""),
             "status": request.args.get("status", ""), "unread": request.args.get("unread", "")}
    if query["sort"] not in SORTS:
        abort(400, f"sort must be one of {', '.join(SORTS)}")
    newest = [s for _, s in zip(range(HISTORY_LIMIT), store().all())]
    return worklist(newest, query["sort"], query["verdict"], query["status"], bool(query["unread"])), query


@bp.get("/history")
def history() -> str:
    studies, query = _worklist()
    dicom = current_app.extensions["ctedge"].get("dicom")
    return render_template("history.html", studies=studies, limit=HISTORY_LIMIT, query=query, sorts=SORTS,
                           verdicts=CLASSES, states=STATES, unread=unread,
                           dicom_send=dicom.outbox.status() if dicom else None)


@bp.get("/history.csv")
def history_csv() -> Response:
    studies, _ = _worklist()
    return Response(to_csv(studies), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=ctedge-worklist.csv"})


@bp.post("/studies/<study_id>/review")
def review(study_id: str) -> Response:
    """The logged-in user's mark on a finished study (``reviewed`` or ``disagree``), with the time."""
    state = store().status(study_id) or abort(404, f"no study {study_id!r}")
    if state["status"] != "done":
        abort(409, "only a finished study can be marked")
    user = session.get("user") or abort(403, "marks are recorded per user: turn server.login_required on to mark studies")
    try:
        store().review(study_id, user, request.form.get("mark", ""))
    except ValueError as exc:
        abort(400, str(exc))
    return redirect(url_for("ui.study", study_id=study_id), 303)
