"""What `faregate up` becomes once its settings are read: it starts every service, prints
the banner, and stops them all on Ctrl-C (or when one of them exits).

`faregate up` reads the settings (pydantic) and checks the ports, then replaces itself with
this module (``os.execv``, same process id). It imports only the standard library and
:mod:`faregate.processes`, so the one process that lives as long as the gateway holds about
12 MB instead of the CLI's and pydantic's ~40 MB. Its one argument is the plan as JSON:
home, log level, the addresses to wait for, and whether to start a private NATS.

    python -m faregate.supervisor '{"home": ..., "http_addr": ..., "grpc_addrs": {...}, ...}'
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from faregate import processes
from faregate.telemetry import setup_logging

GRPC_SERVICES = ("auth", "billing", "router")


def supervise(plan: dict[str, Any]) -> int:
    """Run the gateway until Ctrl-C (exit code 0) or a service's exit (1)."""
    home = Path(plan["home"])
    setup_logging("up", plan["log_level"])
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
        if plan["private_nats"]:
            _, env["FAREGATE_NATS_URL"] = launcher.nats(home / "nats")
        started = {name: launcher.service(name) for name in GRPC_SERVICES}
        for name in GRPC_SERVICES:
            host, port = processes.split_host_port(plan["grpc_addrs"][name])
            processes.wait_tcp(host, port, started[name], timeout=60)  # a gRPC service binds when ready
        edge = launcher.service("edge")
        host, port = processes.split_host_port(plan["http_addr"])
        url = f"http://{host}:{port}"
        processes.wait_http_ok(f"{url}/health", edge)  # 200 once every service's gRPC health says serving
        admin_token = os.environ.get("FAREGATE_ADMIN_TOKEN") or (home / "admin_token").read_text().strip()
        _banner(url, admin_token, _demo_key(home, url, admin_token), home)
        while not stopping:
            dead = [p for p in launcher.procs if not p.alive()]
            if dead:
                print(f"faregate: {dead[0].name} exited with {dead[0].popen.returncode}; stopping", file=sys.stderr)
                return 1
            time.sleep(0.3)
        return 0
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
    print(
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
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(supervise(json.loads(sys.argv[1])))
