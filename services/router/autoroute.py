"""The auto-router: the best model for a task among those a healthy, configured provider serves.

A task (free text such as "fix this Python bug", or a category name) is read as one of the
catalog's categories by keywords. Candidates are that category's models in catalog order —
the order a catalog lists its models in is its order of preference — or by price for
``cheap``. A model is available when the first route of its chain that this router can use
(provider configured) is not skipped by its breaker (open, or cooling after Retry-After).
When no model of the category is available, the best available general model is chosen.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from faregate.errors import ProvidersUnavailable
from services.router.breakers import Breakers, BreakerState
from services.router.calls import Caller
from services.router.catalog import Catalog, Model, Route

AUTO_MODEL = "auto"
CATEGORIES = ("general", "coding", "reasoning", "vision", "fast", "cheap", "chinese", "embedding")
_KEYWORDS: dict[str, tuple[str, ...]] = {
    "coding": (
        "code",
        "coding",
        "program",
        "debug",
        "bug",
        "python",
        "javascript",
        "typescript",
        "rust",
        "sql",
        "refactor",
        "function",
        "compile",
        "unit test",
        "regex",
    ),
    "reasoning": (
        "reason",
        "math",
        "logic",
        "proof",
        "prove",
        "puzzle",
        "think",
        "step by step",
        "solve",
        "analy",
        "plan",
    ),
    "vision": ("vision", "image", "picture", "photo", "screenshot", "diagram", "ocr", "chart"),
    "chinese": ("chinese", "mandarin", "中文", "汉语", "普通话"),
    "fast": ("fast", "quick", "realtime", "real-time", "latency", "autocomplete", "instant"),
    "cheap": ("cheap", "budget", "bulk", "batch", "low cost", "inexpensive"),
    "embedding": ("embedding", "embed", "vector", "semantic search"),
}
_MAX_ALTERNATIVES = 3


def task_category(task: str) -> str:
    """The category a task is read as: a category's own name, else the first keyword match."""
    text = task.strip().lower()
    if text in CATEGORIES:
        return text
    if re.search(r"[\u4e00-\u9fff]", text):
        return "chinese"
    for category, words in _KEYWORDS.items():
        if any(w in text for w in words):
            return category
    return "general"


@dataclass(frozen=True)
class Choice:
    model: Model
    provider: str
    reason: str


@dataclass(frozen=True)
class Choices:
    task: str
    category: str
    ranked: list[Choice]  # primary first, never empty


class AutoRouter:
    def __init__(
        self,
        catalog: Catalog,
        breakers: Breakers,
        usable: Callable[[Route], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._catalog = catalog
        self._breakers = breakers
        self._usable = usable or (lambda r: catalog.providers[r.provider].configured)
        self._clock = clock

    def _eligible(self, model: Model, caller: Caller | None) -> bool:
        if caller is not None and (caller.test_mode or caller.guest):
            return (model.test or not caller.test_mode) and (model.guest or not caller.guest)
        return not model.test

    def _provider(self, model: Model, health: dict[str, BreakerState], now: float) -> str | None:
        for route in model.routes:
            if not self._usable(route):
                continue
            b = health[route.provider]
            if b.cooling_until > now or b.state == "open":
                continue
            return route.provider
        return None

    async def choose(self, task: str, caller: Caller | None = None) -> Choices:
        category = task_category(task)
        health = await self._breakers.snapshot(self._catalog.providers)
        now = self._clock()

        def ranked(cat: str) -> list[tuple[Model, str]]:
            models = [m for m in self._catalog.list(cat) if self._eligible(m, caller)]
            if cat != "embedding":
                models = [m for m in models if "embedding" not in m.categories]
            if cat == "cheap":
                models.sort(key=lambda m: m.prompt_price + m.completion_price)
            out = []
            for m in models:
                provider = self._provider(m, health, now)
                if provider is not None:
                    out.append((m, provider))
            return out

        found = ranked(category)
        fallback = not found and category not in ("general", "embedding")
        if caller is not None and (caller.test_mode or caller.guest) and not found:
            found = ranked("test")
        extra = [] if category == "embedding" else [mp for mp in ranked("general") if mp not in found]
        if not found and not extra:
            raise ProvidersUnavailable(
                f"no model for {category!r} tasks has a configured, healthy provider",
                code="no_model_available",
                retry_after=1,
            )
        choices = []
        for i, (model, provider) in enumerate(found[: 1 + _MAX_ALTERNATIVES]):
            if category == "cheap":
                reason = (
                    f"#{i + 1} cheapest available ({model.prompt_price:g} / {model.completion_price:g} USD per 1M "
                    f"tokens in/out) with {provider} healthy"
                )
            else:
                reason = f"#{i + 1} in the catalog's order for {category} tasks with {provider} configured and healthy"
            choices.append(Choice(model, provider, reason))
        for model, provider in extra[: 1 + _MAX_ALTERNATIVES - len(choices)]:
            if fallback and not choices:
                reason = f"no {category} model is available; the first general model with {provider} healthy"
            else:
                reason = f"a general model as a further alternative, with {provider} healthy"
            choices.append(Choice(model, provider, reason))
        return Choices(task, category, choices)
