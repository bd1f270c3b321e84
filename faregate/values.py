"""The typed values services exchange: routing modes, key modes and statuses, ledger kinds.

Inside a service each is a ``StrEnum`` whose value is the string stored in the database and
shown in the edge's JSON (``"auto"``, ``"active"``, ``"topup"``): the REST contract and the
stored columns keep their strings. On the wire each is its proto enum (``…_UNSPECIFIED`` = 0);
servicers and clients convert with :meth:`to_pb` / :meth:`from_pb`, nowhere else.

``from_pb`` of ``…_UNSPECIFIED`` (or a number a newer peer added) is the enum's default
where "not set" has a meaning (a routing mode: auto), otherwise ``InvalidRequest``.
"""

from __future__ import annotations

import enum
from typing import Any, Self

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from faregate.errors import InvalidRequest
from faregate.pb.auth.v1 import auth_pb2
from faregate.pb.billing.v1 import billing_pb2
from faregate.pb.rpc.v1 import routing_pb2


class WireEnum(enum.StrEnum):
    """A StrEnum with a proto enum twin whose names are ``<PREFIX><MEMBER>``."""

    def to_pb(self) -> Any:  # the proto enum's number (protobuf types enum fields as ints)
        return _WIRE[type(self)].to_pb[self]

    @classmethod
    def from_pb(cls, number: int, *, param: str | None = None) -> Self:
        wire = _WIRE[cls]
        member = wire.from_pb.get(number, wire.default)
        if member is None:
            names = ", ".join(m.value for m in cls)
            raise InvalidRequest(f"{param or cls.__name__} must be one of {names}", param=param)
        return member  # type: ignore[return-value]


class RoutingMode(WireEnum):
    AUTO = "auto"  # the model's route chain, best healthy provider first
    PREFERRED = "preferred"  # the preferred provider first, then the rest of the chain
    FAILOVER = "failover"  # only the preferred provider


class KeyMode(WireEnum):
    LIVE = "live"
    TEST = "test"


class KeyStatus(WireEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


class EntryKind(WireEnum):
    USAGE = "usage"
    TOPUP = "topup"
    CREDIT_GRANT = "credit_grant"
    REFUND = "refund"
    DISPUTE = "dispute"
    ADJUSTMENT = "adjustment"


class _Wire:
    def __init__(self, cls: type[WireEnum], pb: EnumTypeWrapper, prefix: str, default: WireEnum | None) -> None:
        self.to_pb = {m: pb.Value(prefix + m.name) for m in cls}  # a name missing in the proto fails here
        self.from_pb = {v: m for m, v in self.to_pb.items()}
        self.default = default
        if len(pb.keys()) != len(self.to_pb) + 1:
            raise RuntimeError(f"{pb.DESCRIPTOR.full_name} and {cls.__name__} differ")


_WIRE: dict[type[WireEnum], _Wire] = {
    RoutingMode: _Wire(RoutingMode, routing_pb2.RoutingMode, "ROUTING_MODE_", RoutingMode.AUTO),
    KeyMode: _Wire(KeyMode, auth_pb2.KeyMode, "KEY_MODE_", None),
    KeyStatus: _Wire(KeyStatus, auth_pb2.KeyStatus, "KEY_STATUS_", None),
    EntryKind: _Wire(EntryKind, billing_pb2.EntryKind, "ENTRY_KIND_", None),
}
