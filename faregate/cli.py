"""`faregate`: run the services, one per sub-command, or all of them with `faregate up`."""

from __future__ import annotations

import json
import os
import sys

import typer

from faregate.lifecycle import import_nats_without_websockets, run
from faregate.settings import AuthSettings, BillingSettings, EdgeSettings, RouterSettings
from faregate.telemetry import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Faregate, the LLM API gateway.",
)


def _print_version(value: bool) -> None:
    if value:
        from faregate import __version__

        typer.echo(f"faregate {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Faregate, the LLM API gateway."""


@app.command()
def auth() -> None:
    """Run the auth service (accounts, keys, limits)."""
    import_nats_without_websockets()
    from services.auth.server import serve

    settings = AuthSettings()
    setup_logging("auth", settings.log_level)
    run(serve(settings))


@app.command()
def billing() -> None:
    """Run the billing service (wallets, ledger, usage consumer)."""
    import_nats_without_websockets()
    from services.billing.server import serve

    settings = BillingSettings()
    setup_logging("billing", settings.log_level)
    run(serve(settings))


@app.command()
def router() -> None:
    """Run the router service (catalog, providers, routing)."""
    from services.router.server import serve

    settings = RouterSettings()
    setup_logging("router", settings.log_level)
    run(serve(settings))


@app.command()
def edge() -> None:
    """Run the public HTTP edge."""
    import_nats_without_websockets()
    from services.edge.app import serve

    settings = EdgeSettings()
    setup_logging("edge", settings.log_level)
    run(serve(settings))


ledger = typer.Typer(help="Check the ledger.", no_args_is_help=True)
app.add_typer(ledger, name="ledger")


@ledger.command("verify")
def ledger_verify() -> None:
    """Check every wallet against its entries and every usage entry against its record."""
    import asyncio

    from faregate import db
    from services.billing.verify import verify

    settings = BillingSettings()

    async def check() -> bool:
        url = settings.database_url_for("billing")
        engine = db.make_engine(url)
        try:
            report = await verify(db.make_sessionmaker(engine))
        finally:
            await engine.dispose()
        for problem in report.problems:
            typer.echo(f"MISMATCH {problem}", err=True)
        typer.echo(
            f"ledger verify: {report.accounts} accounts, {report.entries} entries, "
            f"{report.usage_records} usage records, {len(report.problems)} mismatches"
        )
        return report.ok

    if not asyncio.run(check()):
        raise typer.Exit(1)


@app.command("mcp-bridge")
def mcp_bridge(
    url: str = typer.Argument(..., help="the MCP endpoint, e.g. https://HOST/v1/mcp"),
    key: str = typer.Option("", "--key", envvar="FAREGATE_API_KEY", help="the API key (none: the guest sandbox)"),
) -> None:
    """Bridge a stdio-only MCP client to a Faregate MCP endpoint (mcp_stdio_bridge.py)."""
    import anyio

    import mcp_stdio_bridge

    anyio.run(mcp_stdio_bridge.bridge, url, key or None)


@app.command()
def up() -> None:
    """Start everything (a private NATS if FAREGATE_NATS_URL is unset); Ctrl-C stops all."""
    from faregate import processes

    settings = EdgeSettings()
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    settings.admin_secret()  # made once here, before the services race for them
    AuthSettings().hmac_key()
    grpc_addrs = {
        "auth": settings.bind_addr(settings.auth_addr),
        "billing": settings.bind_addr(settings.billing_addr),
        "router": settings.bind_addr(settings.router_addr),
    }
    for addr in [*grpc_addrs.values(), settings.http_addr]:
        if not processes.port_free(addr):
            typer.echo(f"faregate: {addr} is already in use (is Faregate already running?)", err=True)
            raise typer.Exit(1)
    plan = {
        "home": str(home),
        "log_level": settings.log_level,
        "private_nats": not settings.nats_url,
        "grpc_addrs": grpc_addrs,
        "http_addr": settings.http_addr,
    }
    sys.stdout.flush()
    # the rest is the supervisor's, without this CLI's and pydantic's memory (faregate/supervisor.py)
    argv = [sys.executable, "-m", "faregate.supervisor", json.dumps(plan)]
    os.execv(sys.executable, argv)  # noqa: S606 - our own interpreter and module


def main() -> None:
    # what Faregate writes (databases, secrets, logs, NATS data under .faregate/) is the owner's alone
    os.umask(0o077)
    app()


if __name__ == "__main__":
    main()
