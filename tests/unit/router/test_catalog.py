from __future__ import annotations

from pathlib import Path

import pytest

from faregate.errors import NotFound
from services.router.catalog import ECHO_MODEL, CatalogError, load_catalog


def test_default_catalog_loads_and_always_has_echo() -> None:
    catalog = load_catalog(None, env={})
    echo = catalog.model(ECHO_MODEL)
    assert echo.test and echo.prompt_price_micros == 0
    assert catalog.providers["faregate"].configured
    assert not catalog.providers["openai"].configured  # no OPENAI_API_KEY in this env
    assert load_catalog(None, env={"OPENAI_API_KEY": "sk-x"}).providers["openai"].configured
    assert len(catalog.models) >= 3


CATEGORIES = {"general", "coding", "reasoning", "vision", "fast", "cheap", "chinese", "embedding"}
LOCAL = {"ollama", "vllm"}


def test_the_default_catalog_covers_the_usual_providers_with_real_models() -> None:
    catalog = load_catalog(None, env={})
    providers = {n: p for n, p in catalog.providers.items() if n != "faregate"}
    assert len(providers) >= 10
    for name in ("openai", "anthropic", "deepseek", "qwen", "siliconflow", "groq", "together", "mistral", "xai"):
        assert name in providers
    for name in ("perplexity", "gemini", *LOCAL):
        assert name in providers
    assert providers["anthropic"].kind == "anthropic"
    assert providers["anthropic"].base_url == "https://api.anthropic.com"
    assert not any(p.configured for p in providers.values()), "nothing is usable before its variable is set"
    models = [m for m in catalog.models.values() if not m.test]
    assert len(models) >= 40
    for m in models:
        assert m.categories and set(m.categories) <= CATEGORIES, m.id
        assert ("embedding" in m.categories) == (m.completion_price == 0), m.id
        assert m.prompt_price > 0 and m.context_length >= 2048, m.id
        assert {r.provider for r in m.routes} - LOCAL, f"{m.id} needs at least one hosted route"
        assert len({r.provider for r in m.routes}) == len(m.routes), f"{m.id} lists a provider twice"
    served_by_several = [m for m in models if len({r.provider for r in m.routes} - LOCAL) > 1]
    assert len(served_by_several) >= 5
    for kind in ("coding", "reasoning", "vision", "fast", "cheap", "chinese", "embedding"):
        assert catalog.list(kind), kind


def test_default_catalog_aliases_take_each_provider_its_own_id() -> None:
    catalog = load_catalog(None, env={})
    llama = catalog.model("meta-llama/Llama-3.3-70B-Instruct")
    assert llama.id == "llama-3.3-70b"
    assert [(r.provider, r.model) for r in llama.routes][:2] == [
        ("groq", "llama-3.3-70b-versatile"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ]
    claude = catalog.model("claude-sonnet-4-5-20250929")
    assert claude.routes[0].provider == "anthropic" and claude.routes[0].model == "claude-sonnet-4-5-20250929"


def test_local_providers_count_only_once_pointed_at() -> None:
    env = {"OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1", "ANTHROPIC_API_KEY": "sk-ant"}
    catalog = load_catalog(None, env=env)
    assert catalog.providers["ollama"].configured and catalog.providers["ollama"].base_url == env["OLLAMA_BASE_URL"]
    assert not catalog.providers["vllm"].configured
    assert catalog.providers["vllm"].missing_env == ("VLLM_BASE_URL",)
    assert catalog.providers["anthropic"].configured


def test_prices_become_integer_micro_usd(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
providers:
  local: {kind: openai, base_url: "http://127.0.0.1:9/v1/"}
models:
  - id: m
    pricing: {prompt: 0.15, completion: 0.6}
    categories: [cheap]
    routes: [{provider: local, model: m-upstream}]
""")
    catalog = load_catalog(path, env={})
    m = catalog.model("m")
    assert (m.prompt_price_micros, m.completion_price_micros) == (150_000, 600_000)
    assert catalog.providers["local"].base_url == "http://127.0.0.1:9/v1"
    assert catalog.providers["local"].configured  # no key needed
    assert [x.id for x in catalog.list("cheap")] == ["m"]
    with pytest.raises(NotFound):
        catalog.model("nope")


@pytest.mark.parametrize(
    "text",
    [
        "models: [{id: m, pricing: {prompt: 1, completion: 1}, routes: [{provider: ghost, model: x}]}]",
        "providers: {p: {kind: smoke}}",
        "models: [{id: m, pricing: {prompt: -1, completion: 1}, routes: [{provider: faregate, model: x}]}]",
        "models: [{id: faregate/echo, pricing: {prompt: 0, completion: 0}, routes: [{provider: faregate, model: e}]}]",
        "{{{ not yaml",
    ],
)
def test_bad_catalogs_are_refused_with_a_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError):
        load_catalog(path, env={})


def test_aliases_resolve_to_the_model_and_cannot_collide(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
providers:
  a: {kind: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  - id: claude-sonnet
    aliases: [claude-3-5-sonnet-latest, sonnet]
    pricing: {prompt: 3, completion: 15}
    routes: [{provider: a, model: claude-3-5-sonnet-20241022}]
""")
    catalog = load_catalog(path, env={})
    assert catalog.model("sonnet").id == "claude-sonnet"
    assert catalog.model("claude-3-5-sonnet-latest").routes[0].model == "claude-3-5-sonnet-20241022"
    assert "sonnet" not in catalog.models  # aliases are not listed as models of their own
    path.write_text(
        path.read_text()
        + """
  - id: sonnet
    pricing: {prompt: 1, completion: 1}
    routes: [{provider: a, model: x}]
"""
    )
    with pytest.raises(CatalogError, match="listed twice"):
        load_catalog(path, env={})


def test_a_provider_with_base_url_env_is_configured_only_when_it_is_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("""
providers:
  ollama: {kind: openai, base_url_env: OLLAMA_BASE_URL}
  vllm:   {kind: openai, base_url_env: VLLM_BASE_URL, api_key_env: VLLM_API_KEY}
models:
  - id: m
    pricing: {prompt: 0, completion: 0}
    routes: [{provider: ollama, model: m}, {provider: vllm, model: m}]
""")
    unset = load_catalog(path, env={})
    assert not unset.providers["ollama"].configured
    assert unset.providers["ollama"].missing_env == ("OLLAMA_BASE_URL",)
    assert unset.providers["vllm"].missing_env == ("VLLM_BASE_URL", "VLLM_API_KEY")
    ollama = load_catalog(path, env={"OLLAMA_BASE_URL": "http://127.0.0.1:11434/v1/"}).providers["ollama"]
    assert ollama.configured and ollama.base_url == "http://127.0.0.1:11434/v1"
    vllm_without_key = load_catalog(path, env={"VLLM_BASE_URL": "http://gpu:8000/v1"}).providers["vllm"]
    assert not vllm_without_key.configured and vllm_without_key.missing_env == ("VLLM_API_KEY",)
    vllm = load_catalog(path, env={"VLLM_BASE_URL": "http://gpu:8000/v1", "VLLM_API_KEY": "k"}).providers["vllm"]
    assert vllm.configured and vllm.base_url == "http://gpu:8000/v1" and vllm.api_key == "k"
    path.write_text(path.read_text().replace("base_url_env: OLLAMA_BASE_URL", "base_url: http://x, base_url_env: B"))
    with pytest.raises(CatalogError, match="not both"):
        load_catalog(path, env={})
