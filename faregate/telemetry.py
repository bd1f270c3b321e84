"""Logging for every process: one line per event, never a secret, never prompt text.

Only identifiers and numbers are logged (request id, account id, model, token counts);
bodies are never passed to a logger. ``SecretStr`` settings print as ``**********``.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access logs cost CPU on the hot path and add nothing the ledger lacks.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("nats", "aiosqlite", "sqlalchemy.engine", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
