"""How the server answers an error: JSON for the API, STOW-RS and ``/health``, a page otherwise."""

from __future__ import annotations

from flask import Response, jsonify, render_template, request


def wants_json() -> bool:
    return request.path.startswith(("/api/", "/dicom-web/")) or request.path == "/health"


def json_error(status: int, message: str, **headers: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    response.headers.update(headers)
    return response


def error_answer(code: int, title: str, message: str) -> Response | tuple[str, int]:
    """The error as JSON for the API, as a page otherwise."""
    if wants_json():
        return json_error(code, message)
    return render_template("error.html", code=code, title=title, message=message), code
