"""A private redis-server for the tests that must stop and restart their own Redis (never the
machine's): append-only with fsync on every write, so its counts survive a kill."""

from __future__ import annotations

import subprocess
from pathlib import Path

from faregate import processes


class PrivateRedis:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = processes.free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or start again on the same port and directory, replaying its append-only file)."""
        self.home.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.home)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.wait_tcp("127.0.0.1", self.port)

    def kill(self) -> None:
        """SIGKILL (no shutdown save), our own process by its PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
