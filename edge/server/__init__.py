"""The clinician web form and JSON API: ``create_app(profile)`` builds the Flask app.

Blueprints: :mod:`edge.server.ui` (login, upload form, status, results, history) and
:mod:`edge.server.api` (``/api/v1``, ``/health``). Studies are analysed by a bounded worker
queue (:mod:`edge.server.jobs`) sharing one :class:`edge.engine.Engine`.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path

from flask import Flask, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from edge.profile import Profile
from edge.server.auth import ServerConfigError, is_loopback, read_users, secret_key
from edge.server.jobs import Analyser, JobQueue, StudyStore

log = logging.getLogger("ctedge.server")
CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def check_settings(profile: Profile) -> None:
    """Refuse settings that would expose studies: login off on a non-loopback address, or no users."""
    s = profile.server
    if not s.login_required and not is_loopback(s.host):
        raise ServerConfigError(profile.source, f"server.login_required is false but the server would listen on "
                                                f"{s.host}: login may only be disabled on a loopback address "
                                                "(127.0.0.1, ::1, localhost)")
    users = users_file(profile)
    if s.login_required and not read_users(users):
        raise ServerConfigError(users, "no users to log in with: add one with "
                                       f"`ctedge serve --config {profile.source} --add-user NAME`")


def users_file(profile: Profile) -> Path:
    return profile.server.users_file or profile.server.results_dir / "users.txt"


def create_app(profile: Profile, engine: Analyser | None = None, *, start_workers: bool = True) -> Flask:
    """Build the app for ``profile``; ``engine`` defaults to ``Engine.from_profile(profile)``."""
    check_settings(profile)
    s = profile.server
    if engine is None:
        from edge.engine import Engine

        engine = Engine.from_profile(profile, copies=s.workers, tune_if_missing=True)
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
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        API_TOKEN=os.environ.get(s.api_token_env, ""),
        API_TOKEN_ENV=s.api_token_env,
        LOGIN_REQUIRED=s.login_required,
        USERS_FILE=users_file(profile),
        MAX_UPLOAD_MB=s.max_upload_mb,
        PROFILE=profile,
    )
    jobs = JobQueue(store, engine, s.workers, s.queue_size)
    app.extensions["ctedge"] = {"store": store, "jobs": jobs, "engine": engine}

    from edge.server import api, ui

    app.register_blueprint(ui.bp)
    app.register_blueprint(api.bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    app.after_request(_security_headers)
    if start_workers:
        jobs.start()
    return app


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/health"


def json_error(status: int, message: str, **headers: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def _http_error(exc: HTTPException) -> Response | tuple[str, int]:
    message = exc.description or exc.name
    if exc.code == 413:
        message = f"the upload is larger than the limit of {current_app.config['MAX_UPLOAD_MB']} MB (server.max_upload_mb)"
    if wants_json():
        return json_error(exc.code or 500, message)
    return render_template("error.html", code=exc.code, title=exc.name, message=message), exc.code or 500


def _internal_error(exc: Exception) -> Response | tuple[str, int]:
    log.error("internal error on %s %s: %s", request.method, request.url_rule, type(exc).__name__)
    message = f"internal error ({type(exc).__name__}); see the server log"
    if wants_json():
        return json_error(500, message)
    return render_template("error.html", code=500, title="Internal error", message=message), 500


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
