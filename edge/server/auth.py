"""Access control, for every route: the API bearer token, the form login (users file, sessions) and
CSRF tokens.

The users file has one ``name:hash`` line per user (hashes from werkzeug's
``generate_password_hash``, scrypt); ``ctedge serve --add-user NAME`` appends one.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, current_app, request, session
from werkzeug.security import check_password_hash, generate_password_hash

from edge.errors import UserError
from edge.server.errors import json_error
from edge.server.sessions import Sessions


@functools.cache
def _dummy_hash() -> str:
    """Checked when the user name is unknown, so that a wrong name costs as long as a wrong password."""
    return generate_password_hash(secrets.token_hex(16))


class ServerConfigError(UserError):
    """Server settings that would make the server unsafe or unusable."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_users(path: Path) -> dict[str, str]:
    """``name -> password hash`` from the users file (missing file: no users)."""
    if not path.is_file():
        return {}
    users = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, hashed = line.partition(":")
        if not sep or not name or not hashed:
            raise ServerConfigError(path, f"line {n} is not 'name:hash' (use ctedge serve --add-user)")
        users[name] = hashed
    return users


def add_user(path: Path, name: str, password: str) -> None:
    """Append (or replace) ``name`` in the users file, readable by the owner only."""
    if not name or ":" in name or name != name.strip():
        raise ServerConfigError(path, f"user name {name!r} must be non-empty, without ':' or surrounding spaces")
    if len(password) < 8:
        raise ServerConfigError(path, "the password must have at least 8 characters")
    users = read_users(path) | {name: generate_password_hash(password)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{u}:{h}\n" for u, h in users.items()))


def check_login(users_file: Path, name: str, password: str) -> bool:
    hashed = read_users(users_file).get(name)
    ok = check_password_hash(hashed or _dummy_hash(), password)
    return ok and hashed is not None


def secret_key(env_name: str, results_dir: Path) -> str:
    """The session signing key: from the environment, else generated once into ``results_dir/secret_key``."""
    if key := os.environ.get(env_name):
        return key
    path = results_dir / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(key := secrets.token_hex(32))
    return key


def token_problem(config: Mapping[str, Any], authorization: str) -> tuple[int, str] | None:
    """None when a request with this ``Authorization`` header may use the token routes (the API and
    STOW-RS) of an app with ``config``, else (HTTP status, message)."""
    expected: str = config["API_TOKEN"]
    if not expected:
        if not config["LOGIN_REQUIRED"]:
            return None  # explicitly open: login_required false on a loopback host
        env = config["API_TOKEN_ENV"]
        return 503, f"the API is disabled: no token configured (set the environment variable {env} and restart)"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return 401, "missing API token: send 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), expected.encode()):
        return 401, "wrong API token"
    return None


def require_token() -> Response | None:
    """The ``before_request`` of every token route: None, or the JSON refusal (a 401 names the scheme)."""
    problem = token_problem(current_app.config, request.headers.get("Authorization", ""))
    if problem is None:
        return None
    status, message = problem
    return json_error(status, message, **({"WWW-Authenticate": 'Bearer realm="ctedge"'} if status == 401 else {}))


def session_user(app: Flask, cookie: Mapping[str, Any]) -> str | None:
    """The user logged in by a session cookie's contents: its session is open and unexpired, its user's
    line in the users file is unchanged since the login, and the cookie names that user; else None."""
    sessions: Sessions = app.extensions["ctedge"]["sessions"]
    user = sessions.user(cookie.get("sid"), read_users(app.config["USERS_FILE"]))
    return user if user is not None and user == cookie.get("user") else None


def csrf_token() -> str:
    """This session's CSRF token (created on first use); forms send it as ``csrf_token``."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    """Abort with 400 unless a POST carries this session's CSRF token."""
    given = request.form.get("csrf_token", "")
    if not (given and "csrf" in session and hmac.compare_digest(given.encode(), session["csrf"].encode())):
        abort(400, "the form has expired or did not come from this site (CSRF token missing or wrong); "
                   "reload the page and try again")
