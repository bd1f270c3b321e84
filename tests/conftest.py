"""Session fixtures: infrastructure (embedded or the machine's servers) and a running stack."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from faregate import processes
from tests.harness import Infra, Stack, create_postgres_database, drop_postgres_database


def pytest_report_header(config: pytest.Config) -> str:
    db = "PostgreSQL" if os.environ.get("FAREGATE_TEST_DATABASE_URL") else "SQLite"
    nats = "machine NATS" if os.environ.get("FAREGATE_TEST_NATS_URL") else "private nats-server"
    redis = "Redis" if os.environ.get("FAREGATE_TEST_REDIS_URL") else "no Redis"
    return f"faregate infrastructure: {db}, {nats}, {redis}"


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    launcher = processes.Launcher(dict(os.environ))
    nats_url = os.environ.get("FAREGATE_TEST_NATS_URL")
    if not nats_url:
        _, nats_url = launcher.nats(tmp_path_factory.mktemp("nats"))
    admin_db = os.environ.get("FAREGATE_TEST_DATABASE_URL")
    database_url = None
    db_name = None
    if admin_db:
        database_url, db_name = create_postgres_database(admin_db)
    try:
        yield Infra(nats_url=nats_url, database_url=database_url, redis_url=os.environ.get("FAREGATE_TEST_REDIS_URL"))
    finally:
        launcher.stop_all()
        if admin_db and db_name:
            drop_postgres_database(admin_db, db_name)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[object]:
    from tests.fakes.upstream import FakeUpstream

    fake = FakeUpstream(api_key="sk-fake-upstream")
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def fake_catalog(fake_base_url: str, dead_port: int, anthropic_base_url: str | None = None) -> str:
    """The test catalog; ``fake-claude`` goes to the fake's Anthropic API (by default beside its OpenAI one)."""
    anthropic_base_url = anthropic_base_url or fake_base_url.removesuffix("/v1")
    return f"""
providers:
  fake: {{kind: openai, base_url: "{fake_base_url}", api_key_env: FAKE_UPSTREAM_KEY}}
  fake-anthropic: {{kind: anthropic, base_url: "{anthropic_base_url}", api_key_env: FAKE_UPSTREAM_KEY}}
  dead: {{kind: openai, base_url: "http://127.0.0.1:{dead_port}/v1"}}
  unset: {{kind: openai, base_url: "http://127.0.0.1:{dead_port}/v1", api_key_env: FAREGATE_TEST_UNSET_KEY}}
models:
  - id: fake-model
    name: Fake Model
    categories: [general, cheap]
    context_length: 16000
    pricing: {{prompt: 1.0, completion: 2.0}}
    features: [tools, streaming]
    routes: [{{provider: fake, model: fake-upstream-model}}]
  - id: fake-embedding
    name: Fake embedding model
    categories: [embedding]
    context_length: 8000
    pricing: {{prompt: 1.0, completion: 0}}
    routes: [{{provider: fake, model: fake-upstream-embedding}}]
  - id: fake-claude
    name: Fake Claude (Anthropic Messages API)
    aliases: [fake-claude-20250101]
    categories: [coding]
    context_length: 200000
    pricing: {{prompt: 3.0, completion: 15.0}}
    features: [tools, streaming]
    routes: [{{provider: fake-anthropic, model: fake-claude-upstream}}]
  - id: fake-down
    name: Fake model whose only provider is down
    pricing: {{prompt: 1.0, completion: 2.0}}
    routes: [{{provider: dead, model: nothing}}]
  - id: fake-unconfigured
    name: Fake model whose provider has no key
    pricing: {{prompt: 1.0, completion: 2.0}}
    routes: [{{provider: unset, model: nothing}}]
"""


@pytest.fixture(scope="session")
def stack(infra: Infra, fake_upstream: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("stack")
    catalog = fake_catalog(
        fake_upstream.base_url,  # type: ignore[attr-defined]
        processes.free_port(),
        fake_upstream.anthropic_base_url,  # type: ignore[attr-defined]
    )
    env = {
        "FAKE_UPSTREAM_KEY": "sk-fake-upstream",
        "FAREGATE_SLOT_LEASE_SECONDS": "3",
        "FAREGATE_BREAKER_OPEN_SECONDS": "2",
    }
    with Stack(Path(home), infra, catalog=catalog, env=env).running() as s:
        yield s
