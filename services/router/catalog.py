"""The model catalog: providers, models, prices and route chains, from FAREGATE_CONFIG.

The YAML format is in DESIGN.md (``providers:`` and ``models:``). A built-in default catalog
(``default_catalog.yaml`` beside this module) is used when no file is given, and the test
model ``faregate/echo`` is always present. Prices are USD per 1M tokens in the file and
integer micro-USD per 1M tokens inside.

A provider is *configured* (its models route) when the variable named by its
``api_key_env``, if any, is set, and, for a provider that takes its address from
``base_url_env`` (local servers: Ollama, vLLM), when that variable is set too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from faregate.errors import ModelNotFound
from faregate.money import usd_to_micros

DEFAULT_CATALOG = Path(__file__).with_name("default_catalog.yaml")
ECHO_MODEL = "faregate/echo"
ECHO_PROVIDER = "faregate"


# The sampling parameters each API kind passes on (a catalog entry may list its own).
_COMMON = ("temperature", "top_p", "max_tokens", "stop", "tools", "tool_choice")
SAMPLING_PARAMETERS: dict[str, tuple[str, ...]] = {
    "openai": (
        *_COMMON,
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "response_format",
        "logit_bias",
        "logprobs",
        "top_logprobs",
    ),
    "anthropic": (*_COMMON, "top_k"),
    "echo": ("max_tokens",),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSpec(_Strict):
    kind: Literal["openai", "anthropic", "echo"]
    base_url: str = ""
    base_url_env: str | None = None  # read the base URL from this variable; unset: not configured
    api_key_env: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_base_url(self) -> ProviderSpec:
        if self.base_url and self.base_url_env:
            raise ValueError("give base_url or base_url_env, not both")
        return self


class PricingSpec(_Strict):
    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)


class RouteSpec(_Strict):
    provider: str
    model: str


class ModelSpec(_Strict):
    id: str
    name: str | None = None
    aliases: list[str] = []  # other public ids that resolve to this model
    categories: list[str] = []
    context_length: int = Field(default=8192, gt=0)
    pricing: PricingSpec
    features: list[str] = []
    input_modalities: list[str] = ["text"]
    sampling_parameters: list[str] | None = None  # default: what the first route's API kind takes
    routes: list[RouteSpec] = Field(min_length=1)
    test: bool = False
    guest: bool = False


class CatalogSpec(_Strict):
    providers: dict[str, ProviderSpec] = {}
    models: list[ModelSpec] = []


@dataclass(frozen=True)
class Provider:
    name: str
    kind: str
    base_url: str
    api_key_env: str | None
    api_key: str | None
    base_url_env: str | None = None

    @property
    def missing_env(self) -> tuple[str, ...]:
        """The environment variables still to set before this provider can be used."""
        missing = []
        if self.base_url_env and not self.base_url:
            missing.append(self.base_url_env)
        if self.api_key_env and not self.api_key:
            missing.append(self.api_key_env)
        return tuple(missing)

    @property
    def configured(self) -> bool:
        """Usable: its key is set (when it needs one) and so is its base URL variable (when it reads one)."""
        return not self.missing_env


@dataclass(frozen=True)
class Route:
    provider: str
    model: str


@dataclass(frozen=True)
class Model:
    id: str
    name: str
    categories: tuple[str, ...]
    context_length: int
    prompt_price: float  # USD per 1M tokens, as configured
    completion_price: float
    prompt_price_micros: int  # micro-USD per 1M tokens
    completion_price_micros: int
    features: tuple[str, ...]
    input_modalities: tuple[str, ...]
    routes: tuple[Route, ...]
    test: bool
    guest: bool
    created: int
    aliases: tuple[str, ...] = ()
    sampling_parameters: tuple[str, ...] = ()

    @property
    def owned_by(self) -> str:
        return self.routes[0].provider


class CatalogError(ValueError):
    pass


class Catalog:
    def __init__(self, providers: Mapping[str, Provider], models: Mapping[str, Model]) -> None:
        self.providers = dict(providers)
        self.models = dict(models)
        self.aliases = {alias: m.id for m in self.models.values() for alias in m.aliases}

    def model(self, model_id: str) -> Model:
        """The model with this public id or alias."""
        found = self.models.get(model_id) or self.models.get(self.aliases.get(model_id, ""))
        if found is None:
            raise ModelNotFound(f"model {model_id!r} does not exist", param="model")
        return found

    def set_price(self, model_id: str, prompt: float, completion: float) -> Model:
        """Replace the model with one at the new prices (requests under way keep the old object)."""
        updated = replace(
            self.model(model_id),
            prompt_price=prompt,
            completion_price=completion,
            prompt_price_micros=usd_to_micros(prompt),
            completion_price_micros=usd_to_micros(completion),
        )
        self.models[updated.id] = updated
        return updated

    def list(self, category: str = "") -> list[Model]:
        return [m for m in self.models.values() if not category or category in m.categories]


def load_catalog(path: Path | None = None, env: Mapping[str, str] | None = None) -> Catalog:
    env = os.environ if env is None else env
    source = path or DEFAULT_CATALOG
    try:
        raw = yaml.safe_load(source.read_text()) or {}
        spec = CatalogSpec.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise CatalogError(f"cannot load catalog {source}: {exc}") from exc
    providers = {
        name: Provider(
            name,
            p.kind,
            (env.get(p.base_url_env, "") if p.base_url_env else p.base_url).rstrip("/"),
            p.api_key_env,
            env.get(p.api_key_env) if p.api_key_env else None,
            p.base_url_env,
        )
        for name, p in spec.providers.items()
    }
    providers[ECHO_PROVIDER] = Provider(ECHO_PROVIDER, "echo", "", None, None)
    created = int(time.time())
    models: dict[str, Model] = {}
    aliases: dict[str, str] = {}
    for m in [*spec.models, _echo_spec()]:
        for r in m.routes:
            if r.provider not in providers:
                raise CatalogError(f"model {m.id!r} routes to unknown provider {r.provider!r}")
        if m.id in models or m.id in aliases:
            raise CatalogError(f"model {m.id!r} is listed twice")
        for alias in m.aliases:
            if alias in models or alias in aliases or alias == m.id:
                raise CatalogError(f"alias {alias!r} of model {m.id!r} is already a model id or alias")
            aliases[alias] = m.id
        models[m.id] = Model(
            id=m.id,
            name=m.name or m.id,
            categories=tuple(m.categories),
            context_length=m.context_length,
            prompt_price=m.pricing.prompt,
            completion_price=m.pricing.completion,
            prompt_price_micros=usd_to_micros(m.pricing.prompt),
            completion_price_micros=usd_to_micros(m.pricing.completion),
            features=tuple(m.features),
            input_modalities=tuple(m.input_modalities),
            routes=tuple(Route(r.provider, r.model) for r in m.routes),
            test=m.test,
            guest=m.guest,
            created=created,
            aliases=tuple(m.aliases),
            sampling_parameters=tuple(
                m.sampling_parameters
                if m.sampling_parameters is not None
                else SAMPLING_PARAMETERS[providers[m.routes[0].provider].kind]
            ),
        )
    return Catalog(providers, models)


def _echo_spec() -> ModelSpec:
    return ModelSpec(
        id=ECHO_MODEL,
        name="Faregate Echo (test model: repeats your last message, free)",
        categories=["test"],
        context_length=32768,
        pricing=PricingSpec(prompt=0, completion=0),
        features=["streaming"],
        routes=[RouteSpec(provider=ECHO_PROVIDER, model="echo")],
        test=True,
        guest=True,
    )
