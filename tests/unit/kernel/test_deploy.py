"""The deployment files parse and start commands that exist."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.main import get_command

from faregate.cli import app

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_every_deploy_file_is_valid_yaml_and_runs_a_real_subcommand() -> None:
    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 6
    started = set()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Deployment":
                [container] = doc["spec"]["template"]["spec"]["containers"]
                assert container["args"][0] == "faregate" and container["args"][1] in commands
                started.add(container["args"][1])
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("auth", "billing", "router", "edge"):
        assert compose["services"][name]["command"] == ["faregate", name]
    assert started == {"auth", "billing", "router", "edge"}
