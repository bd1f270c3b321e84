"""Extract the schemas our tests validate against from OpenAI's OpenAPI document.

Usage: python tests/spec/build_schemas.py PATH/TO/openai-openapi.json

Writes tests/spec/openai-schemas.json with the named component schemas and everything they
reference, rewriting OpenAPI's ``nullable: true`` into JSON Schema so a standard Draft
2020-12 validator accepts null wherever OpenAI allows it.
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
]
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            found |= refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= refs(value)
    return found


def nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: nullable(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        elif isinstance(kind, list):
            out["type"] = [*kind, "null"] if "null" not in kind else kind
        else:
            return {"anyOf": [out, {"type": "null"}]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    schemas = doc["components"]["schemas"]
    wanted: set[str] = set()
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(refs(schemas[name]) - wanted)
    out = {
        "x-source": "extracted from OpenAI's OpenAPI document by tests/spec/build_schemas.py",
        "components": {"schemas": {n: nullable(schemas[n]) for n in sorted(wanted)}},
    }
    target = Path(__file__).with_name("openai-schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(wanted)} schemas to {target.name}")


if __name__ == "__main__":
    main()
