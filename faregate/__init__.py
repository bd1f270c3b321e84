"""Faregate: a self-hostable, OpenAI-compatible LLM API gateway with exact metering."""

__version__ = "0.1.0"
