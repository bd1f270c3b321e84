"""Faregate: a self-hostable, OpenAI-compatible LLM API gateway with exact metering."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # `faregate.__version__` is the installed package's version: pyproject.toml holds the one
    # literal. Read on first use, not at import: importlib.metadata would cost the supervisor
    # that lives as long as the gateway (faregate/supervisor.py, ADR 8) ~1.7 MB and 20 modules.
    if name == "__version__":
        from importlib.metadata import version

        return version("faregate")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
