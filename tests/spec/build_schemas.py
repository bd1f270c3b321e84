"""Extract the schemas our tests validate against from OpenAI's OpenAPI document.

Usage: python tests/spec/build_schemas.py PATH/TO/openai-openapi.json

Writes tests/spec/openai-schemas.json holding the ROOTS component schemas and everything they
``$ref``, still under ``components/schemas`` so ``#/components/schemas/X`` refs resolve. While
copying it turns OpenAPI's non-standard keywords into JSON Schema, so that a standard Draft
2020-12 validator accepts exactly what OpenAI documents:

* ``nullable: true`` adds ``"null"`` to ``type`` (and ``None`` to ``enum``), or wraps the schema
  in ``anyOf: [..., {"type": "null"}]`` when it has no ``type``;
* OpenAPI 3.0's boolean ``exclusiveMinimum``/``exclusiveMaximum`` become the numeric form.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "CreateChatCompletionRequest",
    "CreateEmbeddingRequest",
]
PREFIX = "#/components/schemas/"
TARGET = Path(__file__).with_name("openai-schemas.json")

# Keywords whose value is a schema, a list of schemas, or a map of name -> schema.
ONE = {"items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"}
ONE |= {"unevaluatedItems", "unevaluatedProperties"}
MANY = {"anyOf", "oneOf", "allOf", "prefixItems"}
MAP = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}


def children(schema: dict[str, Any]) -> list[Any]:
    """The subschemas of ``schema`` (not its data: examples, defaults, enums, x-* extensions)."""
    out: list[Any] = []
    for key, value in schema.items():
        if key in ONE:
            out.append(value)
        elif key in MANY and isinstance(value, list):
            out.extend(value)
        elif key in MAP and isinstance(value, dict):
            out.extend(value.values())
    return out


def refs(schema: Any) -> set[str]:
    """Names of the component schemas that ``schema`` references, directly or nested."""
    if not isinstance(schema, dict):
        return set()
    found: set[str] = set()
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if not ref.startswith(PREFIX):
            raise SystemExit(f"unsupported $ref {ref!r}")
        found.add(ref[len(PREFIX) :])
    for child in children(schema):
        found |= refs(child)
    return found


def to_json_schema(schema: Any) -> Any:
    """A copy of ``schema`` with OpenAPI-only keywords rewritten as Draft 2020-12."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "nullable":
            continue
        if key in ONE:
            out[key] = to_json_schema(value)
        elif key in MANY and isinstance(value, list):
            out[key] = [to_json_schema(v) for v in value]
        elif key in MAP and isinstance(value, dict):
            out[key] = {name: to_json_schema(v) for name, v in value.items()}
        else:
            out[key] = value
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
            out[bound] = out.pop(limit)
    if schema.get("nullable") is not True:
        return out
    kind = out.get("type")
    if kind is None:
        return {"anyOf": [out, {"type": "null"}]}
    kinds = kind if isinstance(kind, list) else [kind]
    if "null" not in kinds:
        out["type"] = [*kinds, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]
    return out


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__.splitlines()[2])
    doc = json.loads(Path(argv[1]).read_text())
    schemas = doc["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(refs(schemas[name]) - wanted)
    version = doc.get("info", {}).get("version", "unknown")
    out = {
        "x-source": f"Extracted from OpenAI's OpenAPI document (version {version}) by tests/spec/build_schemas.py;"
        " regenerate rather than edit.",
        "components": {"schemas": {name: to_json_schema(schemas[name]) for name in sorted(wanted)}},
    }
    TARGET.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(wanted)} schemas to {TARGET.name}")


if __name__ == "__main__":
    main(sys.argv)
