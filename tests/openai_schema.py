"""Validate our responses against OpenAI's own schemas (tests/spec/openai-schemas.json)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SPEC = Path(__file__).with_name("spec") / "openai-schemas.json"
URI = "urn:openai-spec"


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    doc = json.loads(SPEC.read_text())
    registry: Registry = Registry().with_resource(URI, Resource.opaque(doc))
    return Draft202012Validator({"$ref": f"{URI}#/components/schemas/{name}"}, registry=registry)


def validate(schema_name: str, instance: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless ``instance`` matches OpenAI's schema."""
    _validator(schema_name).validate(instance)
