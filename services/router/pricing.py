"""Price changes without a restart, the same on every router replica.

An admin's change is written to a JetStream key-value bucket (one key per model, the last
value wins) and every router replica watches that bucket: a replica that starts later reads
the changes made before it. The catalog object is replaced, never mutated, so a request
keeps the price that was in force when it started. After a change the edge is told on
``faregate.catalog.changed`` to reload its price cache (it uses prices only to size holds).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from typing import Any

import orjson

from faregate.errors import InvalidRequest
from faregate.events import CATALOG_CHANGED
from services.router.catalog import Catalog, Model

log = logging.getLogger(__name__)

MAX_PRICE_USD = 10_000.0  # per 1M tokens: anything above is a typo


def _kv_key(model_id: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; model ids may hold ':' or '@'.
    return base64.urlsafe_b64encode(model_id.encode()).decode()


class PriceBook:
    def __init__(self, catalog: Catalog, js: Any, nc: Any, bucket: str) -> None:
        self._catalog = catalog
        self._js = js
        self._nc = nc
        self._bucket = bucket
        self._kv: Any = None
        self._watcher: Any = None

    async def start(self) -> None:
        """Open (or create) the bucket and apply every change made so far (before serving:
        a request never sees a price older than the bucket's)."""
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except Exception:  # BucketNotFoundError; a replica racing us may create it first
                self._kv = await self._js.create_key_value(bucket=self._bucket, history=1)
        self._watcher = await self._kv.watchall()
        async for entry in self._watcher:
            if entry is None:  # the marker after the existing values
                break
            self._apply(entry.value)

    async def follow(self) -> None:
        """Apply changes as they come (a supervised component). A watch that ends or fails
        raises; the restart watches again from the start, which applies each model's last
        value (idempotent), so a change made meanwhile is not missed."""
        try:
            if self._watcher is None:
                await self.start()
            async for entry in self._watcher:
                if entry is not None and entry.value:
                    self._apply(entry.value)
        finally:
            await self._stop_watching()
        raise ConnectionError("the price-book watch ended")

    async def _stop_watching(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):  # NATS gone: the watch is gone with it
                await watcher.stop()

    def _apply(self, raw: bytes) -> None:
        try:
            change = orjson.loads(raw)
            self._catalog.set_price(change["model"], float(change["prompt"]), float(change["completion"]))
        except Exception as exc:  # an unknown model (catalog changed) or a damaged entry
            log.warning("ignoring a price change that does not apply: %s", exc)

    async def set(self, model_id: str, prompt: float, completion: float) -> Model:
        for name, value in (("prompt", prompt), ("completion", completion)):
            if not (0 <= value <= MAX_PRICE_USD):
                raise InvalidRequest(f"pricing.{name} must be between 0 and {MAX_PRICE_USD:g} USD per 1M tokens")
        model = self._catalog.model(model_id)  # 404 for an unknown model; aliases name their model
        change = {"model": model.id, "prompt": prompt, "completion": completion}
        await self._kv.put(_kv_key(model.id), orjson.dumps(change))
        updated = self._catalog.set_price(model.id, prompt, completion)  # now, not when the watch delivers
        await self._nc.publish(CATALOG_CHANGED, orjson.dumps({"model": model.id}))
        log.info("price of %s set to %g / %g USD per 1M tokens", model.id, prompt, completion)
        return updated

    async def close(self) -> None:
        await self._stop_watching()
