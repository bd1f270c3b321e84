"""docs/security.md stays true: its limits table names real settings with their defaults."""

from __future__ import annotations

import re
from pathlib import Path

from faregate.settings import EdgeSettings

DOC = Path(__file__).resolve().parents[3] / "docs" / "security.md"


def _limits_table() -> dict[str, str]:
    text = DOC.read_text()
    section = text.split("## Limits and their defaults", 1)[1]
    return dict(re.findall(r"^\| `FAREGATE_([A-Z_]+)` \| ([^|]+?) \|", section, flags=re.M))


def test_the_limits_table_gives_each_settings_default() -> None:
    table = _limits_table()
    assert len(table) >= 6
    fields = EdgeSettings.model_fields
    for name, documented in table.items():
        field = fields[name.lower()]  # a row naming no setting fails here
        assert float(documented) == float(field.default), f"FAREGATE_{name}: doc {documented}, default {field.default}"


def test_every_edge_limit_setting_is_in_the_table() -> None:
    table = {name.lower() for name in _limits_table()}
    limits = {n for n in EdgeSettings.model_fields if n.startswith("max_") or n.endswith(("_timeout", "_per_minute"))}
    assert limits <= table, limits - table
