"""What the edge knows of a caller and of auth's and billing's answers: domain values.

Protobuf stays in the clients (services/edge/clients.py): the gateway, its grants and its
adapters work with these, and unit tests build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from faregate.values import RoutingMode


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a request presents: its key (empty for a guest) and where it comes from."""

    key: str
    client_ip: str = ""

    @property
    def live(self) -> bool:
        return self.key.startswith("gw_live_")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The per-minute window as auth counted it for this request."""

    limit: int
    remaining: int
    reset_at: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class Caller:
    """Who auth admitted: what the router needs to route and meter the request."""

    account_id: str
    key_id: str
    billable: bool
    test_mode: bool = False
    guest: bool = False
    max_tokens_cap: int = 0  # 0: none
    routing_mode: RoutingMode = RoutingMode.AUTO
    preferred_provider: str = ""
    rate_limit: RateLimit | None = None
    slot_lease_seconds: int = 60


@dataclass(frozen=True, slots=True)
class AdmissionGrant:
    """Admissions beyond the request's own, already counted in the key's limits (ADR 11)."""

    admissions: int
    slot_ids: tuple[str, ...]
    valid_ms: int
    window: int  # the minute window they were counted in (Unix seconds)
    id: str = ""  # auth refunds its returns once


@dataclass(frozen=True, slots=True)
class Admitted:
    """auth's answer to an admission: the caller, its slot (empty: none taken), a grant."""

    caller: Caller
    slot_id: str = ""
    grant: AdmissionGrant | None = None


@dataclass(frozen=True, slots=True)
class SlotRelease:
    key_id: str
    slot_id: str


@dataclass(frozen=True, slots=True)
class GrantReturn:
    """An ended grant's unspent admissions, given back to the window they were counted in."""

    key_id: str
    unused: int
    window: int
    grant_id: str = ""


@dataclass(slots=True)
class AdmissionAsk:
    """One Authenticate: the request, the grant asked for, and what this edge gives back."""

    credentials: Credentials
    request_id: str
    grant_wanted: int = 0
    grant_slots_wanted: int = 0
    released: list[SlotRelease] = field(default_factory=list)
    returned: list[GrantReturn] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FundsGrant:
    """Funds billing held for this edge to admit an account's next requests against."""

    id: str
    micros: int
    valid_ms: int


@dataclass(frozen=True, slots=True)
class GrantSpend:
    grant_id: str
    request_id: str
    amount_micros: int


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A catalog model's prices as the edge sizes funds holds with them."""

    names: tuple[str, ...]  # its id and aliases
    prompt_micros: int  # per 1M tokens
    completion_micros: int
    context_length: int
    free: bool
    autoroutable: bool  # the auto-router may pick it (not a test or an embedding model)
