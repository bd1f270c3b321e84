"""Typed settings, read from FAREGATE_* environment variables at start-up (never at import).

Each service builds the settings class it needs in its ``serve()``; secrets are
``SecretStr`` so they never appear in logs or reprs. Secrets that are not given are made
once and kept under the home directory (``.faregate/`` by default), readable only by the
owner, so every process of one installation agrees on them.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_AUTH_ADDR = "127.0.0.1:50051"
DEFAULT_ROUTER_ADDR = "127.0.0.1:50052"
DEFAULT_BILLING_ADDR = "127.0.0.1:50053"


class Settings(BaseSettings):
    """What every service shares."""

    model_config = SettingsConfigDict(env_prefix="FAREGATE_", extra="ignore")

    home: Path = Path(".faregate")
    log_level: str = "INFO"
    auth_addr: str = DEFAULT_AUTH_ADDR
    router_addr: str = DEFAULT_ROUTER_ADDR
    billing_addr: str = DEFAULT_BILLING_ADDR
    nats_url: str | None = None
    usage_stream: str = "FAREGATE_USAGE"
    usage_subject: str = "faregate.usage.v1"
    # how long a usage consumer (billing's ledger, auth's token counter) lets a short batch
    # fill: fewer, larger transactions and fetches; the ledger lags the answers by about this
    usage_batch_wait: float = Field(default=0.25, ge=0)
    # how long an edge may spend a grant of auth's admissions or billing's funds (ADR 11);
    # 0 turns grants off (every request asks auth and billing)
    grant_seconds: float = Field(default=1.0, ge=0, le=60)
    catalog_bucket: str = "FAREGATE_CATALOG"  # JetStream key-value bucket of admin price changes
    redis_url: str | None = None
    redis_prefix: str = "faregate:"

    def secret(self, name: str, given: SecretStr | None) -> SecretStr:
        """The given secret, or the one kept in ``home/name`` (made on first use)."""
        return given if given is not None else SecretStr(load_or_create_secret(self.home / name))

    def bind_addr(self, addrs: str) -> str:
        """The address this replica listens on: the first of a comma-separated list."""
        return addrs.split(",")[0].strip()


class DatabaseSettings(Settings):
    database_url: str | None = None

    def database_url_for(self, service: str) -> str:
        """The configured URL, or a SQLite file per service under the home directory."""
        if self.database_url:
            return self.database_url
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.home / f'{service}.db').resolve()}"


class AuthSettings(DatabaseSettings):
    key_secret: SecretStr | None = None  # HMAC key for API-key hashes
    plans: str | None = None  # JSON changes to the default plans, e.g. {"basic": {"rpm": 100}}
    slot_lease_seconds: float = Field(default=60.0, gt=0)  # a concurrency slot not renewed expires
    # how long a replica trusts its cached copy of a key; revocations and changes also reach
    # every replica at once over NATS (faregate.keys.changed), so this bounds a lost message
    key_cache_seconds: float = Field(default=0.9, ge=0)  # ≤ 0.9 keeps revocation within 1 s (ADR 16)

    def hmac_key(self) -> bytes:
        return self.secret("key_secret", self.key_secret).get_secret_value().encode()


class BillingSettings(DatabaseSettings):
    min_balance_usd: float = 0.0  # below this (balance minus holds) live requests get 402
    hold_ttl_seconds: float = Field(default=900.0, gt=0)
    # where holds live: memory (one billing replica; no write per request), database (any
    # number of replicas), auto = memory on SQLite, database otherwise (ADR 7)
    holds: Literal["auto", "memory", "database"] = "auto"
    consumer_batch: int = 256
    consumer_ack_wait: float = Field(default=30.0, gt=0)  # unacked records (a crashed billing) come back after this
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None  # tests point the SDK at a local Stripe-compatible stub
    stripe_webhook_tolerance_seconds: int = Field(default=300, gt=0)


class RouterSettings(Settings):
    config: Path | None = None
    upstream_connect_timeout: float = 10.0
    upstream_timeout: float = 600.0
    upstream_pool_size: int = Field(default=10_000, ge=1)  # per router; every running stream holds one
    breaker_threshold: int = Field(default=3, ge=1)  # consecutive failures that open a provider's circuit
    breaker_open_seconds: float = Field(default=600.0, gt=0)  # skipped this long, then one probe
    breaker_probe_seconds: float = Field(default=60.0, gt=0)  # a probe that never reports back frees the slot
    first_token_timeout: float = Field(default=20.0, gt=0)  # a stream with no first chunk by then fails over


class EdgeSettings(Settings):
    http_addr: str = "127.0.0.1:8080"
    trusted_proxies: str = ""  # CIDRs whose X-Forwarded-For is believed, comma-separated
    admin_token: SecretStr | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # counted while it arrives: 413 once passed
    max_request_line_bytes: int = Field(default=8 * 1024, ge=256)  # method, path and query: 414 past it
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # all header lines together: 431 past it
    # the longest a client may take to send a request's headers, and then its body: 408
    read_timeout: float = Field(default=30.0, gt=0)
    keepalive_timeout: float = Field(default=5.0, gt=0)  # an idle connection is closed after this
    # /admin/* only on this address (the public one then answers 404 for it); unset: on http_addr
    admin_addr: str | None = None
    # wrong admin tokens from one client address, per minute, before 429s
    admin_failures_per_minute: int = Field(default=10, ge=1)
    # browser origins allowed to call /v1/mcp besides the edge's own ("*": any), comma-separated
    mcp_allowed_origins: str = ""

    def admin_secret(self) -> str:
        return self.secret("admin_token", self.admin_token).get_secret_value()


def load_or_create_secret(path: Path) -> str:
    """Read a secret file, creating it atomically with a random value if missing."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    try:
        os.link(tmp, path)  # fails if another process won the race; theirs stands
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
