"""A check of a JSON document against docs/result.schema.json, for the subset of JSON Schema that
docs/make_result_schema.py writes (``type``, ``properties``, ``required``, ``additionalProperties``,
``items``, ``anyOf``, ``$ref`` into ``$defs``); jsonschema is not installed."""

from __future__ import annotations

import json
from typing import Any

from tests.helpers.paths import REPO

RESULT_SCHEMA = REPO / "docs" / "result.schema.json"
TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None),
         "object": dict, "array": list}


def result_schema() -> dict[str, Any]:
    return json.loads(RESULT_SCHEMA.read_text())


def schema_problems(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, at: str = "$") -> list[str]:
    """Every place where ``value`` breaks ``schema``, as ``path: problem`` ([] when it conforms)."""
    root = schema if root is None else root
    if "$ref" in schema:
        return schema_problems(value, root["$defs"][schema["$ref"].rsplit("/", 1)[1]], root, at)
    if "anyOf" in schema:
        tries = [schema_problems(value, s, root, at) for s in schema["anyOf"]]
        return [] if any(not t for t in tries) else [f"{at}: matches none of anyOf ({tries})"]
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        # bool is an int in Python, not in JSON
        if not any(isinstance(value, TYPES[n]) and not (isinstance(value, bool) and n in ("integer", "number"))
                   for n in names):
            return [f"{at}: {type(value).__name__} {value!r:.40} is not {' or '.join(names)}"]
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{at}: missing required key {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", {})
        for key, item in value.items():
            if key in properties:
                problems += schema_problems(item, properties[key], root, f"{at}.{key}")
            elif extra is False:
                problems.append(f"{at}: key {key!r} is not in the schema")
            elif extra:
                problems += schema_problems(item, extra, root, f"{at}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            problems += schema_problems(item, schema["items"], root, f"{at}[{i}]")
    return problems
