"""Wires the auth service: settings → database → domain → gRPC server."""

from __future__ import annotations

import logging

from faregate import db
from faregate.grpc import start_server
from faregate.lifecycle import wait_for_shutdown
from faregate.pb.auth.v1 import auth_pb2, auth_pb2_grpc
from faregate.settings import AuthSettings
from services.auth.admission import Authenticator
from services.auth.keys import KeyHasher
from services.auth.servicer import AuthServicer
from services.auth.storage import AuthStore

log = logging.getLogger(__name__)


async def serve(settings: AuthSettings) -> None:
    url = settings.database_url_for("auth")
    await db.upgrade_async("auth", url)
    engine = db.make_engine(url)
    auth = Authenticator(AuthStore(db.make_sessionmaker(engine)), KeyHasher(settings.hmac_key()))
    auth.start()
    addr = settings.bind_addr(settings.auth_addr)
    server, _ = await start_server(
        addr,
        lambda s: auth_pb2_grpc.add_AuthServiceServicer_to_server(AuthServicer(auth), s),
        [auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name],
    )
    log.info("auth listening on %s", addr)
    try:
        await wait_for_shutdown()
    finally:
        await server.stop(grace=5)
        await auth.close()
        await engine.dispose()
