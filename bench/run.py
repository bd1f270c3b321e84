"""`make bench`: Faregate side by side with the bare upstream, on this machine.

Targets, in interleaved rounds (A B, B A, …) so drift hits both alike:
  direct    the lean fake upstream itself (bench/upstream.py): the floor
  faregate  the whole stack as `make run` starts it (edge, auth, router, billing and a
            private nats-server), metering on, a live key on an unlimited plan

Per target and concurrency: requests/s, p50/p90/p99 latency, added latency over direct, and
CPU per request summed over every process of the target (utime + stime from /proc). Then
streaming (20 chunks) time to first byte, total time and CPU per relayed chunk, and idle RSS.
Afterwards the ledger must hold one usage record per Faregate request.

BENCH_QUICK=1 runs one short round. LiteLLM is not part of this run yet (see bench/README.md).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from faregate import processes

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = bool(os.environ.get("BENCH_QUICK"))
ROUNDS = 1 if QUICK else 3
SECONDS = 3.0 if QUICK else 10.0
CONCURRENCY = [1, 16] if QUICK else [1, 16, 64]
STREAM_CHUNKS = 20
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def post(url: str, body: dict[str, Any], token: str) -> dict[str, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def load(url: str, key: str, concurrency: int, seconds: float, *, stream: bool = False) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.load", url, key, str(concurrency), str(seconds)]
    out = subprocess.run(argv + (["--stream"] if stream else []), capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.upstream_port = processes.free_port()
        self.stream_port = processes.free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_upstream(self, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port", str(port), *extra])
        self.procs.append(proc)
        processes.wait_tcp("127.0.0.1", port)
        return proc

    def start_faregate(self) -> tuple[subprocess.Popen[bytes], str, str]:
        catalog = self.work / "catalog.yaml"
        catalog.write_text(f"""
providers:
  bench: {{kind: openai, base_url: "http://127.0.0.1:{self.upstream_port}/v1"}}
  bench-stream: {{kind: openai, base_url: "http://127.0.0.1:{self.stream_port}/v1"}}
models:
  - id: bench-model
    pricing: {{prompt: 0.15, completion: 0.60}}
    routes: [{{provider: bench, model: bench-upstream}}]
  - id: bench-stream
    pricing: {{prompt: 0.15, completion: 0.60}}
    routes: [{{provider: bench-stream, model: bench-upstream}}]
""")
        port = processes.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAREGATE_")}
        env.update(
            {
                "FAREGATE_HOME": str(self.work / "home"),
                "FAREGATE_CONFIG": str(catalog),
                "FAREGATE_HTTP_ADDR": f"127.0.0.1:{port}",
                "FAREGATE_LOG_LEVEL": "WARNING",
                "FAREGATE_AUTH_ADDR": f"127.0.0.1:{processes.free_port()}",
                "FAREGATE_ROUTER_ADDR": f"127.0.0.1:{processes.free_port()}",
                "FAREGATE_BILLING_ADDR": f"127.0.0.1:{processes.free_port()}",
            }
        )
        up = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli", "up"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "up.log", "wb"),
        )
        self.procs.append(up)
        url = f"http://127.0.0.1:{port}"
        processes.wait_http_ok(f"{url}/health", timeout=120)
        while not (self.work / "home" / "demo_key").exists():
            time.sleep(0.2)
        admin = (self.work / "home" / "admin_token").read_text().strip()
        account = post(f"{url}/admin/accounts", {"name": "bench", "plan": "unlimited"}, admin)
        post(f"{url}/admin/accounts/{account['id']}/credit", {"amount_usd": 100_000}, admin)
        key = post(f"{url}/admin/accounts/{account['id']}/keys", {"mode": "live"}, admin)["key"]
        return up, url, key

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def measure(targets: dict[str, dict[str, Any]], concurrency: int, stream: bool = False) -> dict[str, dict]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    order = list(targets)
    for r in range(ROUNDS):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            t = targets[name]
            pids = t["pids"]()
            before = cpu_seconds(pids)
            result = load(t["url"], t["key"], concurrency, SECONDS, stream=stream)
            result["cpu_ms_per_request"] = (cpu_seconds(pids) - before) * 1000 / max(result["requests"], 1)
            rows[name].append(result)
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            key: {
                "median": statistics.median(r[key] for r in runs),
                "min": min(r[key] for r in runs),
                "max": max(r[key] for r in runs),
            }
            for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "ttfb_p50_ms", "cpu_ms_per_request")
        }
        summary[name]["requests"] = sum(r["requests"] for r in runs)
        summary[name]["errors"] = sum(r["errors"] for r in runs)
    return summary


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="faregate-bench-"))
    bench = Bench(work)
    try:
        upstream = bench.start_upstream(bench.upstream_port, ["--chunks", str(STREAM_CHUNKS)])
        bench.start_upstream(bench.stream_port, ["--chunks", str(STREAM_CHUNKS)])
        up, url, key = bench.start_faregate()
        time.sleep(2)
        fg_pids = lambda: children(up.pid)  # noqa: E731
        idle_rss = rss_mb(fg_pids())
        targets = {
            "direct": {
                "url": f"http://127.0.0.1:{bench.upstream_port}/v1/chat/completions",
                "key": "x",
                "pids": lambda: [upstream.pid],
            },
            "faregate": {"url": f"{url}/v1/chat/completions", "key": key, "pids": fg_pids},
        }
        results: dict[str, Any] = {
            "machine": {"cores": os.cpu_count(), "quick": QUICK, "rounds": ROUNDS, "seconds_per_cell": SECONDS},
            "idle_rss_mb": {"faregate": round(idle_rss, 1)},
            "json": {},
            "stream": {},
        }
        for c in CONCURRENCY:
            print(f"non-streaming, {c} in flight …", flush=True)
            results["json"][str(c)] = measure(targets, c)
        results["peak_rss_mb"] = {"faregate": round(rss_mb(fg_pids()), 1)}
        stream_targets = {
            "direct": {**targets["direct"], "url": f"http://127.0.0.1:{bench.stream_port}/v1/chat/completions"},
            "faregate": {**targets["faregate"], "url": f"{url}/v1/chat/completions"},
        }
        print("streaming, 16 in flight …", flush=True)
        results["stream"]["16"] = measure(stream_targets, 16, stream=True)
        served = sum(v["faregate"]["requests"] for v in results["json"].values())
        served += results["stream"]["16"]["faregate"]["requests"]
        results["ledger"] = check_ledger(work / "home" / "billing.db", served)
    finally:
        bench.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "latest.md").write_text(table(results))
    chart(results)
    print(table(results))
    return 0 if results["ledger"]["ok"] else 1


def check_ledger(db: Path, served: int) -> dict[str, Any]:
    """One usage record per answered Faregate request (the bench key's requests only)."""
    deadline = time.monotonic() + 60
    count = -1
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            count = conn.execute("SELECT count(*) FROM usage_records WHERE model LIKE 'bench-%'").fetchone()[0]
        if count >= served:
            break
        time.sleep(0.5)
    return {"requests_answered": served, "usage_records": count, "ok": count == served}


def fmt(cell: dict[str, float], key: str, digits: int = 1) -> str:
    return f"{cell[key]['median']:.{digits}f} ({cell[key]['min']:.{digits}f}–{cell[key]['max']:.{digits}f})"


def table(r: dict[str, Any]) -> str:
    lines = [
        "# Faregate benchmark",
        "",
        f"{r['machine']['cores']} cores shared by the load generator, the upstream and the target; "
        f"{r['machine']['rounds']} interleaved rounds × {r['machine']['seconds_per_cell']:.0f} s per cell; "
        "medians (min–max).",
        "",
        "| in flight | target | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | CPU ms/request |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, cell in r["json"].items():
        base = cell["direct"]["p50_ms"]["median"]
        for name, row in cell.items():
            added = row["p50_ms"]["median"] - base
            lines.append(
                f"| {c} | {name} | {fmt(row, 'rps', 0)} | {fmt(row, 'p50_ms', 2)} | {fmt(row, 'p90_ms', 2)} "
                f"| {fmt(row, 'p99_ms', 2)} | {added:+.2f} | {fmt(row, 'cpu_ms_per_request', 2)} |"
            )
    lines += [
        "",
        f"Streaming ({STREAM_CHUNKS} chunks, 16 in flight):",
        "",
        "| target | streams/s | TTFB p50 ms | total p50 ms | CPU µs/chunk |",
        "|---|---|---|---|---|",
    ]
    for name, row in r["stream"]["16"].items():
        per_chunk = row["cpu_ms_per_request"]["median"] * 1000 / STREAM_CHUNKS
        lines.append(
            f"| {name} | {fmt(row, 'rps', 0)} | {fmt(row, 'ttfb_p50_ms', 2)} | {fmt(row, 'p50_ms', 2)} "
            f"| {per_chunk:.0f} |"
        )
    lines += [
        "",
        f"Idle RSS, all Faregate processes: {r['idle_rss_mb']['faregate']:.0f} MB; after the JSON runs: "
        f"{r['peak_rss_mb']['faregate']:.0f} MB.",
        f"Ledger: {r['ledger']['usage_records']} usage records for {r['ledger']['requests_answered']} "
        f"answered requests ({'one each' if r['ledger']['ok'] else 'MISMATCH'}).",
        "",
    ]
    return "\n".join(lines)


def chart(r: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')")
        return
    conc = list(r["json"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("direct", "faregate"):
        a.plot(conc, [r["json"][c][name]["rps"]["median"] for c in conc], marker="o", label=name)
        b.plot(conc, [r["json"][c][name]["cpu_ms_per_request"]["median"] for c in conc], marker="o", label=name)
    a.set(title="requests/s", xlabel="in flight")
    b.set(title="CPU ms per request (all processes)", xlabel="in flight")
    a.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
