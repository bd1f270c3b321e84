"""`faregate`: run the services, one per sub-command, or all of them with `faregate up`."""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import typer

from faregate.lifecycle import run
from faregate.settings import AuthSettings, BillingSettings, EdgeSettings, RouterSettings, split_host_port
from faregate.telemetry import setup_logging

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Faregate, the LLM API gateway.",
)


@app.command()
def auth() -> None:
    """Run the auth service (accounts, keys, limits)."""
    from services.auth.server import serve

    settings = AuthSettings()
    setup_logging("auth", settings.log_level)
    run(serve(settings))


@app.command()
def billing() -> None:
    """Run the billing service (wallets, ledger, usage consumer)."""
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


@app.command()
def up() -> None:
    """Start everything (a private NATS if FAREGATE_NATS_URL is unset); Ctrl-C stops all."""
    from faregate import processes

    settings = EdgeSettings()
    setup_logging("up", settings.log_level)
    home = settings.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    admin_token = settings.admin_secret()
    AuthSettings().hmac_key()  # made once here, before the services race for it
    addrs = [settings.bind_addr(a) for a in (settings.auth_addr, settings.billing_addr, settings.router_addr)]
    for addr in [*addrs, settings.http_addr]:
        if not processes.port_free(addr):
            typer.echo(f"faregate: {addr} is already in use (is Faregate already running?)", err=True)
            raise typer.Exit(1)
    env = processes.base_env()
    env["FAREGATE_HOME"] = str(home)
    launcher = processes.Launcher(env)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        if not settings.nats_url:
            _, env["FAREGATE_NATS_URL"] = launcher.nats(home / "nats")
        started = {name: launcher.service(name) for name in ("auth", "billing", "router")}
        for name, addr in (
            ("auth", settings.auth_addr),
            ("billing", settings.billing_addr),
            ("router", settings.router_addr),
        ):
            host, port = split_host_port(settings.bind_addr(addr))
            processes.wait_tcp(host, port, started[name], timeout=60)  # a gRPC service binds when ready
        edge_proc = launcher.service("edge")
        host, port = split_host_port(settings.http_addr)
        url = f"http://{host}:{port}"
        processes.wait_http_ok(f"{url}/health", edge_proc)  # 200 once every service's gRPC health says serving
        demo_key = _demo_key(home, url, admin_token)
        _banner(url, admin_token, demo_key, home)
        while not stopping:
            dead = [p for p in launcher.procs if not p.alive()]
            if dead:
                typer.echo(f"faregate: {dead[0].name} exited with {dead[0].popen.returncode}; stopping", err=True)
                raise typer.Exit(1)
            time.sleep(0.3)
    finally:
        launcher.stop_all()


def _admin_post(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(  # noqa: S310 - our own loopback edge
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _demo_key(home: Path, url: str, admin_token: str) -> str:
    """A test key of a 'demo' account, made on first start, so the printed curl line works."""
    path = home / "demo_key"
    if path.exists():
        return path.read_text().strip()
    account = _admin_post(f"{url}/admin/accounts", admin_token, {"name": "demo"})
    key = _admin_post(f"{url}/admin/accounts/{account['id']}/keys", admin_token, {"name": "demo", "mode": "test"})
    path.touch(mode=0o600)
    path.write_text(key["key"] + "\n")
    return str(key["key"])


def _banner(url: str, admin_token: str, demo_key: str, home: Path) -> None:
    body = '{"model": "faregate/echo", "messages": [{"role": "user", "content": "Hello, Faregate"}]}'
    typer.echo(
        f"""
Faregate is up: {url}   (state in {home})

  admin token:  {admin_token}
  demo test key (free, test models only): {demo_key}

Try it:
  curl -s {url}/v1/chat/completions -H "Authorization: Bearer {demo_key}" \\
       -H "Content-Type: application/json" -d '{body}'

Create an account and a live key:
  curl -s {url}/admin/accounts -H "Authorization: Bearer {admin_token}" -d '{{"name": "acme"}}'
  curl -s {url}/admin/accounts/ACCOUNT_ID/keys -H "Authorization: Bearer {admin_token}" -d '{{"mode": "live"}}'

Ctrl-C stops everything.
""",
        err=False,
    )
    sys.stdout.flush()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
