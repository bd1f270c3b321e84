"""Which accounts exist: auth owns accounts, so billing asks it (over gRPC) and remembers.

Accounts are never deleted, so a known account stays known; an unknown one is asked about
again next time (it may have been created since). When auth cannot answer, the lookup
fails and the caller retries later: a record is never dead-lettered because auth was down.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from faregate.grpc import error_from_rpc
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc

MAX_REMEMBERED = 200_000


class AccountDirectory:
    def __init__(self, auth: auth_pb2_grpc.AuthServiceStub, *, timeout: float = 5.0) -> None:
        self._auth = auth
        self._timeout = timeout
        self._known: set[str] = set()

    async def unknown(self, account_ids: Iterable[str]) -> set[str]:
        """Those of ``account_ids`` that auth does not know. Raises if auth cannot answer."""
        missing: set[str] = set()
        for account_id in set(account_ids) - self._known:
            try:
                await self._auth.GetAccount(auth_pb2.GetAccountRequest(account_id=account_id), timeout=self._timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    missing.add(account_id)
                    continue
                raise error_from_rpc(exc) from None
            if len(self._known) >= MAX_REMEMBERED:
                self._known.clear()
            self._known.add(account_id)
        return missing
