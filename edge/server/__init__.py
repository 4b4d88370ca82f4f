"""The clinician web form and JSON API: ``create_app(profile)`` builds the Flask app.

Blueprints: :mod:`edge.server.ui` (login, upload form, status, results, history) and
:mod:`edge.server.api` (``/api/v1``, ``/health``). Studies are analysed by a bounded worker
queue (:mod:`edge.server.jobs`) sharing one :class:`edge.engine.Device`. Every request must name
an allowed ``Host`` (DNS rebinding) and a state-changing one must not come from another ``Origin``.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from edge.engine import Device
from edge.ingest.sources import Limits
from edge.profile import Profile
from edge.server import api, ui
from edge.server.auth import ServerConfigError, is_loopback, read_users, secret_key
from edge.server.errors import error_answer
from edge.server.jobs import Analyser, JobQueue, StudyStore
from edge.server.sessions import Sessions
from edge.server.throttle import LoginThrottle
from edge.server.uploads import UploadPolicy
from edge.storage import is_disk_full

if TYPE_CHECKING:
    from edge.dicomnet.service import DicomService   # pynetdicom: loaded by ctedge serve only with a dicom: section

log = logging.getLogger("ctedge.server")
CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SESSION_LIFETIME = timedelta(hours=8)


def check_settings(profile: Profile) -> None:
    """Refuse settings that would expose studies: login off on a non-loopback address, or no users."""
    s = profile.server
    if not s.login_required and not is_loopback(s.host):
        raise ServerConfigError(profile.source, f"server.login_required is false but the server would listen on "
                                                f"{s.host}: login may only be disabled on a loopback address "
                                                "(127.0.0.1, ::1, localhost)")
    if s.host in WILDCARD_HOSTS and not s.allowed_hosts:
        raise ServerConfigError(profile.source, f"the server would listen on all addresses ({s.host or 'all'}): "
                                                "list the host names clients use in server.allowed_hosts")
    users = users_file(profile)
    if s.login_required and not read_users(users):
        raise ServerConfigError(users, "no users to log in with: add one with "
                                       f"`ctedge serve --config {profile.source} --add-user NAME`")


def users_file(profile: Profile) -> Path:
    return profile.server.users_file or profile.server.results_dir / "users.txt"


def allowed_hosts(profile: Profile) -> frozenset[str]:
    """Host names the server answers to: loopback names, its bind address and ``server.allowed_hosts``."""
    extra = {h.strip().lower().strip("[]") for h in profile.server.allowed_hosts.split(",") if h.strip()}
    return LOOPBACK_NAMES | extra | ({profile.server.host.lower()} - WILDCARD_HOSTS)


def create_app(profile: Profile, engine: Analyser | None = None, *, start_workers: bool = True,
               dicom: DicomService | None = None) -> Flask:
    """Build the app for ``profile``; ``engine`` defaults to ``Device.from_profile(profile)``. With
    ``dicom`` (the profile's DICOM service, built and started by ``ctedge serve``), /health and the
    history page report its sends and STOW-RS stores into its inbox."""
    check_settings(profile)
    s = profile.server
    if engine is None:
        engine = Device.from_profile(profile, copies=s.workers, tune_if_missing=True)
    store = StudyStore(s.results_dir)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key(s.secret_key_env, s.results_dir),
        MAX_CONTENT_LENGTH=s.max_upload_mb * 2**20,
        MAX_FORM_MEMORY_SIZE=2**20,
        MAX_FORM_PARTS=25_000,
        SESSION_COOKIE_NAME="ctedge_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=s.cookie_secure,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
        API_TOKEN=os.environ.get(s.api_token_env, ""),
        API_TOKEN_ENV=s.api_token_env,
        LOGIN_REQUIRED=s.login_required,
        USERS_FILE=users_file(profile),
        MAX_UPLOAD_MB=s.max_upload_mb,
        ALLOWED_HOSTS=allowed_hosts(profile),
        PROFILE=profile,
    )
    jobs = JobQueue(store, engine, s.workers, s.queue_size, s.keep_uploads_days, profile.retention)
    policy = UploadPolicy(Limits(max_archive_bytes=s.max_unpacked_mb * 2**20), s.min_free_mb * 2**20)
    app.extensions["ctedge"] = {"store": store, "jobs": jobs, "engine": engine, "uploads": policy,
                                "sessions": Sessions(SESSION_LIFETIME.total_seconds()), "throttle": LoginThrottle()}
    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    if dicom is not None:
        app.extensions["ctedge"]["dicom"] = dicom
        from edge.server.stow import bp as stow  # pynetdicom: only when the profile has DICOM

        app.register_blueprint(stow)  # DICOMweb STOW-RS into the DICOM inbox
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.before_request(_check_host_and_origin)
    app.after_request(_security_headers)
    if start_workers:
        jobs.start()
    return app


STOP_WAIT_S = 5.0
"""How long a stop waits for the running studies before it re-queues them."""


def stop_app(app: Flask) -> None:
    """Stop what :func:`create_app` started: the DICOM service (its watcher is crash-safe: a study
    it was analysing is taken again after the restart) and the workers; a study still running
    after ``STOP_WAIT_S`` is put back in the queue for the next start, not counted as a failed attempt."""
    services = app.extensions["ctedge"]
    if dicom := services.get("dicom"):
        dicom.stop(timeout=STOP_WAIT_S)
    services["jobs"].stop(timeout=STOP_WAIT_S)


def _http_error(exc: HTTPException) -> Response | tuple[str, int]:
    message = exc.description or exc.name
    if exc.code == 413:
        message = f"the upload is larger than the limit of {current_app.config['MAX_UPLOAD_MB']} MB (server.max_upload_mb)"
    return error_answer(exc.code or 500, exc.name, message)


def _internal_error(exc: Exception) -> Response | tuple[str, int]:
    if is_disk_full(exc):  # e.g. while the request body is spooled to a temporary file
        log.error("disk full on %s %s", request.method, request.url_rule)
        code, title, message = 507, "Disk full", "the server's disk is full; try again later"
    else:
        log.error("internal error on %s %s: %s", request.method, request.url_rule, type(exc).__name__)
        code, title, message = 500, "Internal error", f"internal error ({type(exc).__name__}); see the server log"
    return error_answer(code, title, message)


def _check_host_and_origin() -> Response | tuple[str, int] | None:
    """400 for a Host not in the allow-list; 403 for a state-changing request from another origin."""
    if host_name(request.host) not in current_app.config["ALLOWED_HOSTS"]:
        return error_answer(400, "Bad host", "this server does not answer to that host name (server.allowed_hosts)")
    origin = request.headers.get("Origin")
    cross_origin = origin is not None and urlsplit(origin).netloc.lower() != request.host.lower()
    if request.method not in SAFE_METHODS and cross_origin:
        return error_answer(403, "Cross-origin request", "the request came from another site (Origin); refused")
    return None


def host_name(host: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case (``[::1]:8080`` -> ``::1``)."""
    if host.count(":") == 1 or (host.startswith("[") and "]:" in host):
        host = host.rsplit(":", 1)[0]
    return host.strip("[]").lower()


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"   # with no-referrer, browsers send Origin: null
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
