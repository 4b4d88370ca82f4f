"""Request body limits per route, enforced by waitress from the headers, before any body is read.

Only an upload route, with credentials that let the request upload, may send ``max_upload_mb``;
every other request (login, logout, pages, API reads) may send at most ``SMALL_BODY`` bytes. A
larger body is answered at once, unread: 401 for an upload without a valid token or session,
413 otherwise, both with a JSON ``error``.
"""

from __future__ import annotations

import copy
import json
from http.cookies import CookieError, SimpleCookie

import waitress
from flask import Flask
from itsdangerous import BadSignature
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer
from waitress.utilities import Error, RequestEntityTooLarge

from edge.server.auth import session_user, token_problem

SMALL_BODY = 64 * 2**10
FORM_OVERHEAD = 2**20            # multipart boundaries, headers and fields around the files
UPLOAD_ROUTES = frozenset({"/api/v1/studies", "/studies", "/dicom-web/studies"})
TOKEN_PREFIXES = ("/api/", "/dicom-web/")   # routes that authenticate with the API token, not a session


class Refusal(Error):
    """A waitress error answer with a JSON ``error`` body."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason = code, reason

    def to_response(self, ident: str | None = None) -> tuple[str, list[tuple[str, str]], bytes]:
        body = json.dumps({"error": self.body}).encode()
        return f"{self.code} {self.reason}", [("Content-Type", "application/json")], body


def body_limit(app: Flask, method: str, path: str, headers: dict[str, str]) -> tuple[int, Refusal]:
    """The largest body ``app`` accepts for this request line and headers (waitress's header names),
    and the answer to a larger one."""
    if method == "POST" and path in UPLOAD_ROUTES:
        if _may_upload(app, path, headers):
            mb = app.config["MAX_UPLOAD_MB"]
            return mb * 2**20 + FORM_OVERHEAD, Refusal(413, "Request Entity Too Large", f"the upload is larger than "
                                                       f"the limit of {mb} MB (server.max_upload_mb)")
        return SMALL_BODY, Refusal(401, "Unauthorized", "uploads need a valid API token "
                                                        "('Authorization: Bearer <token>') or a logged-in session")
    return SMALL_BODY, Refusal(413, "Request Entity Too Large", f"this request may carry at most "
                                                                f"{SMALL_BODY // 2**10} KB of body; only uploads may be larger")


def _may_upload(app: Flask, path: str, headers: dict[str, str]) -> bool:
    """The checks of ``edge.server.auth`` on the request's headers: the API token on the token routes,
    else a logged-in session (unless login is off)."""
    if path.startswith(TOKEN_PREFIXES):
        return token_problem(app.config, headers.get("AUTHORIZATION", "")) is None
    if not app.config["LOGIN_REQUIRED"]:
        return True
    try:
        cookie = SimpleCookie(headers.get("COOKIE", "")).get(app.config["SESSION_COOKIE_NAME"])
        serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
        data = serializer.loads(cookie.value, max_age=int(app.permanent_session_lifetime.total_seconds()))  # type: ignore[union-attr]
    except (AttributeError, CookieError, BadSignature):
        return False
    return session_user(app, data) is not None


def create_server(app: Flask, host: str, port: int, threads: int) -> BaseWSGIServer:
    """A waitress server for ``app`` that applies :func:`body_limit` to every request."""

    class Parser(HTTPRequestParser):
        refusal: Refusal | None = None

        def parse_header(self, header_plus: bytes) -> None:
            super().parse_header(header_plus)
            self.adj = copy.copy(self.adj)  # type: ignore[has-type]  # waitress checks this limit before and while reading the body
            self.adj.max_request_body_size, self.refusal = body_limit(app, self.command, self.path, self.headers)

        def received(self, data: bytes) -> int:
            consumed = super().received(data)
            if isinstance(self.error, RequestEntityTooLarge) and self.refusal:  # type: ignore[has-type]
                self.error = self.refusal
            return consumed

    class Channel(HTTPChannel):
        parser_class = Parser

    httpd = waitress.create_server(app, host=host, port=port, threads=threads, ident="ctedge")
    servers = [httpd] if isinstance(httpd, BaseWSGIServer) else [
        s for s in httpd.map.values() if isinstance(s, BaseWSGIServer)]
    for server in servers:
        server.channel_class = Channel
    return httpd
