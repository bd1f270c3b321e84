"""Alembic entry point for this service's history; the environment itself is shared."""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "env.py"), run_name="alembic_env")
