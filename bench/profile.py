"""py-spy flame graphs of running Faregate services, and a short text of their top frames.

``start`` launches one ``py-spy record`` per service (SVG flame graph and raw collapsed
stacks, without pausing the target); ``finish`` waits for them and summarises each raw file:
the share of samples in the frames that cost the most, by inclusive time, for Faregate's and
its libraries' code.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVICES = ("edge", "auth", "router", "billing")
_OURS = (
    "services/",
    "faregate/",
    "grpc",
    "sqlalchemy",
    "aiosqlite",
    "nats",
    "starlette",
    "fastapi",
    "uvicorn",
    "aiohttp",
    "orjson",
    "redis",
    "asyncio",
)


def service_name(pid: int) -> str | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return None
    words = [a.decode(errors="replace") for a in argv]
    for name in SERVICES:
        if name in words and any(w.endswith("faregate.cli") or w.endswith("faregate") for w in words):
            return name
    return None


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def start(services: dict[str, int], out_dir: Path, seconds: float) -> dict[str, Any]:
    exe = _py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = {}
    if exe is None:
        return {"out_dir": out_dir, "procs": {}, "error": "py-spy not installed (pip install '.[bench]')"}
    for name, pid in services.items():
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            procs[(name, suffix)] = subprocess.Popen(
                [
                    exe,
                    "record",
                    "-p",
                    str(pid),
                    "-d",
                    str(int(seconds)),
                    "-r",
                    "250",
                    "--nonblocking",
                    "-f",
                    fmt,
                    "-o",
                    str(out_dir / f"{name}.{suffix}"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    return {"out_dir": out_dir, "procs": procs}


def finish(recording: dict[str, Any]) -> dict[str, Any]:
    for proc in recording["procs"].values():
        proc.wait(timeout=120)
    out: dict[str, Any] = {"files": [], "top": {}}
    if "error" in recording:
        out["error"] = recording["error"]
    for name, suffix in recording["procs"]:
        path = recording["out_dir"] / f"{name}.{suffix}"
        if path.exists():
            out["files"].append(f"profiles/{path.name}")
            if suffix == "txt":
                out["top"][name] = top_frames(path.read_text())
    return out


def _short(frame: str) -> str:
    frame = re.sub(r"\(/[^)]*?site-packages/", "(", frame)
    frame = re.sub(r"\(/[^)]*?/(services|faregate)/", r"(\1/", frame)
    return re.sub(r"\(/[^)]*?/python3\.\d+/", "(", frame)


_ENTRY = ("runners.py", "lifecycle.py", "cli.py", "threading.py", "events.py:84")


def top_frames(raw: str, n: int = 8) -> dict[str, list[tuple[str, float]]]:
    """The frames with the most samples (shares of all samples): ``self`` (where the CPU was
    when sampled; ``Runner.run`` is the event loop's C code, grpc's included) and
    ``inclusive`` (with callees; entry frames left out), ours and libraries'."""
    inclusive: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_short(f) for f in stack.split(";")]
        total += int(count)
        self_[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)

    def share(count: int) -> float:
        return round(100 * count / max(total, 1), 1)

    picked = [
        (f, share(c))
        for f, c in inclusive.most_common()
        if any(k in f for k in _OURS) and not any(e in f for e in _ENTRY)
    ]
    return {"self": [(f, share(c)) for f, c in self_.most_common(n)], "inclusive": picked[:n]}
