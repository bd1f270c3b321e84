"""One version string: the package metadata's, from pyproject.toml."""

from __future__ import annotations

import importlib.metadata

from typer.testing import CliRunner

import faregate
from faregate.cli import app
from faregate.settings import EdgeSettings
from services.edge.app import create_app


def test_the_cli_and_the_edge_report_the_package_version() -> None:
    version = importlib.metadata.version("faregate")
    assert faregate.__version__ == version
    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output == f"faregate {version}\n"
    assert create_app(EdgeSettings()).version == version
