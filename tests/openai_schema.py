"""Validate JSON against OpenAI's own schemas (tests/spec/openai-schemas.json, see build_schemas.py)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).with_name("spec") / "openai-schemas.json"
URI = "urn:faregate:openai-schemas"


@functools.cache
def _registry() -> tuple[Registry, frozenset[str]]:
    doc = json.loads(SPEC.read_text())
    resource = Resource.from_contents(doc, default_specification=DRAFT202012)
    return Registry().with_resource(URI, resource), frozenset(doc["components"]["schemas"])


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    registry, names = _registry()
    if name not in names:
        raise KeyError(f"{name} is not in {SPEC.name}; add it to ROOTS in build_schemas.py and rerun it")
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def validate(schema_name: str, instance: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches OpenAI's ``schema_name``."""
    _validator(schema_name).validate(instance)
