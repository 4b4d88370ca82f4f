"""Write docs/result.schema.json, the JSON Schema of the result document, from the TypedDicts of
``edge/result.py`` (the schema mypy checks the code against).

    .venv/bin/python docs/make_result_schema.py            # rewrites docs/result.schema.json
    .venv/bin/python docs/make_result_schema.py --out FILE

Each TypedDict becomes one definition (``$defs``); its required keys are the keys outside its
``total=False`` part, and keys it does not declare are refused (``additionalProperties: false``).
``tests/test_result_schema.py`` fails when docs/result.schema.json differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from pathlib import Path
from typing import Any

from edge import result

DEFAULT_OUT = Path(__file__).with_name("result.schema.json")
SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``edge.result.ResultDoc``."""
    defs: dict[str, Any] = {}
    root = _type_schema(result.ResultDoc, defs)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "ctedge/result.schema.json",
            "title": "ctedge result document",
            "description": "The result document of one study (ctedge predict --json, the API, a result folder's "
                           "result.json). Generated from edge/result.py by docs/make_result_schema.py: do not edit.",
            "x-schema-version": result.SCHEMA_VERSION, **root, "$defs": dict(sorted(defs.items()))}


def _type_schema(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    if typing.is_typeddict(tp):
        name = tp.__name__.lstrip("_")
        if name not in defs:
            defs[name] = {}      # a placeholder while its keys are written (no recursion expected, but safe)
            hints = typing.get_type_hints(tp)
            defs[name] = {"type": "object", **({"description": _doc(tp)} if _doc(tp) else {}),
                          "properties": {key: _type_schema(t, defs) for key, t in hints.items()},
                          "required": sorted(tp.__required_keys__), "additionalProperties": False}
        return {"$ref": f"#/$defs/{name}"}
    if tp is Any:
        return {}
    if tp in SCALARS:
        return {"type": SCALARS[tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if all(a in SCALARS for a in args):
            return {"type": [SCALARS[a] for a in args]}
        return {"anyOf": [_type_schema(a, defs) for a in args]}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], defs)}
    if origin is dict:
        value = _type_schema(args[1], defs)
        return {"type": "object", **({"additionalProperties": value} if value else {})}
    raise TypeError(f"no JSON Schema for {tp!r}: add it to docs/make_result_schema.py")


def _doc(obj: Any) -> str:
    """The first paragraph of a docstring, on one line ('' for the functional TypedDicts' default)."""
    text = obj.__doc__ or ""
    if text.startswith(obj.__name__ + "(") or not text.strip():
        return ""
    return " ".join(text.strip().split("\n\n")[0].split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out
    out.write_text(json.dumps(schema(), indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
