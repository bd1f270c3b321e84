"""`make bench`: Faregate side by side with LiteLLM's proxy and the bare upstream, on this machine.

Targets, in interleaved rounds (A B C D, B C D A, …) so drift hits all alike:
  direct      the lean fake upstream itself (bench/upstream.py): the floor
  faregate    the whole stack as `make run` starts it (edge, auth, router, billing and a
              private nats-server), metering on, a live key on an unlimited plan
  litellm-1   LiteLLM's proxy (bench/litellm.py: its own venv, master key, no database), 1 worker
  litellm-2   the same with 2 workers

Per target and concurrency: requests/s, p50/p90/p99 latency, added latency over direct,
CPU per request summed over every process of the target (utime + stime from /proc) and peak
RSS. Then streams of 20 chunks (time to first byte, total time, CPU per relayed chunk), how
many slow streams (a chunk every 100 ms for 30 s) each target carries to the end and the RSS
that costs, py-spy profiles of the Faregate processes, and idle RSS. Afterwards the ledger
must hold one usage record per answered Faregate request.

BENCH_QUICK=1 runs one short round with small slow-stream counts; BENCH_NO_LITELLM=1 leaves
LiteLLM out. BENCH_CELLS=json:16,json:64,stream:16,slow:1000 runs only those cells (no
profile); BENCH_BASELINE=<rev> adds Faregate as it was at that git revision as the target
faregate@<short-hash> (bench/baseline.py), measured right beside faregate, the two swapped
every other round, and compared with it in the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.baseline import Baseline, ensure
from faregate import processes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
QUICK = bool(os.environ.get("BENCH_QUICK"))
WITH_LITELLM = not os.environ.get("BENCH_NO_LITELLM")
ROUNDS = 1 if QUICK else 3
SECONDS = 3.0 if QUICK else 10.0
CONCURRENCY = [1, 16] if QUICK else [1, 16, 64]
STREAM_CHUNKS = 20
SLOW_CHUNKS = 300  # one every 100 ms: 30 s
SLOW = {"faregate": [300] if QUICK else [1000, 5000], "litellm": [300] if QUICK else [1000, 5000]}
TICK = os.sysconf("SC_CLK_TCK")
Row = tuple[str, str, str, bool | None]  # a target of the issue: what, wanted, measured, met
CELLS_SPEC = os.environ.get("BENCH_CELLS", "").strip()
BASELINE_REV = os.environ.get("BENCH_BASELINE", "").strip()
NO_SLOWER = 1.05  # issue 16 item 7: CPU per metered request within 5% of the baseline's
NO_SLOWER_AT = ("16", "64")
CELL_KINDS = ("json", "stream", "mcp", "slow")


def chosen_cells(spec: str) -> dict[str, list[int]]:
    """BENCH_CELLS ("json:16,json:64,stream:16,slow:1000") as {kind: levels}; unset, every cell."""
    if not spec:
        return {"json": CONCURRENCY, "stream": [1, 16], "mcp": [16], "slow": []}  # slow: SLOW per kind
    cells: dict[str, list[int]] = {kind: [] for kind in CELL_KINDS}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, level = item.partition(":")
        if kind not in cells or not level.isdigit() or int(level) < 1:
            raise SystemExit(f"BENCH_CELLS: {item!r} is not one of json:N, stream:N, mcp:N, slow:N")
        if int(level) not in cells[kind]:
            cells[kind].append(int(level))
    return cells


CELLS = chosen_cells(CELLS_SPEC)


def slow_levels(name: str) -> list[int]:
    """The slow-stream counts for a target: BENCH_CELLS' slow cells if given, else SLOW's."""
    if CELLS_SPEC:
        levels = CELLS["slow"]
    elif name == "direct":
        levels = [n for counts in SLOW.values() for n in counts]
    else:
        levels = SLOW["faregate" if is_faregate(name) else "litellm"]
    if name == "direct":  # the floor: only the largest count asked of any target
        return [max(levels)] if levels else []
    return levels


def is_faregate(name: str) -> bool:
    """faregate, or a baseline of it (faregate@<rev>)."""
    return name == "faregate" or name.startswith("faregate@")


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes, and of their children that ended and were reaped (a worker
    a supervisor restarted keeps counting through its parent's cutime and cstime)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
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


def tree(pid: int) -> list[int]:
    """The process and all its descendants (LiteLLM's workers, Faregate's services)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


class PeakRss:
    """Samples the RSS of a set of processes in the background; ``peak`` is the highest sum."""

    def __init__(self, pids: Any, interval: float = 0.5) -> None:
        self._pids, self._interval = pids, interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self._pids()))
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self._pids()))


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


def load(
    url: str, key: str, concurrency: int, seconds: float, *, stream: bool = False, model: str = "", mcp: bool = False
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.load", url, key, str(concurrency), str(seconds)]
    argv += ["--stream"] if stream else []
    argv += ["--mcp"] if mcp else []
    argv += ["--model", model] if model else []
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.upstream_port = processes.free_port()
        self.stream_port = processes.free_port()
        self.slow_port = processes.free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_upstream(self, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port", str(port), *extra])
        self.procs.append(proc)
        processes.wait_tcp("127.0.0.1", port)
        return proc

    def write_catalog(self) -> Path:
        catalog = self.work / "catalog.yaml"
        catalog.write_text(f"""
providers:
  bench: {{kind: openai, base_url: "http://127.0.0.1:{self.upstream_port}/v1"}}
  bench-stream: {{kind: openai, base_url: "http://127.0.0.1:{self.stream_port}/v1"}}
  bench-slow: {{kind: openai, base_url: "http://127.0.0.1:{self.slow_port}/v1"}}
models:
  - id: bench-model
    pricing: {{prompt: 0.15, completion: 0.60}}
    routes: [{{provider: bench, model: bench-upstream}}]
  - id: bench-stream
    pricing: {{prompt: 0.15, completion: 0.60}}
    routes: [{{provider: bench-stream, model: bench-upstream}}]
  - id: bench-slow
    pricing: {{prompt: 0.15, completion: 0.60}}
    routes: [{{provider: bench-slow, model: bench-upstream}}]
""")
        return catalog

    def start_faregate(
        self, home: Path, python: Path = Path(sys.executable), cwd: Path = ROOT
    ) -> tuple[subprocess.Popen[bytes], str, str]:
        """`faregate up` of the tree at cwd through that tree's interpreter (the current one, or
        a baseline's venv), with its own home; then a live key on an unlimited plan."""
        port = processes.free_port()
        drop = ("FAREGATE_", "VIRTUAL_ENV", "PYTHONPATH")  # nothing of this tree's interpreter leaks into another's
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            {
                "FAREGATE_HOME": str(home),
                "FAREGATE_CONFIG": str(self.work / "catalog.yaml"),
                "FAREGATE_HTTP_ADDR": f"127.0.0.1:{port}",
                "FAREGATE_LOG_LEVEL": "WARNING",
                "FAREGATE_AUTH_ADDR": f"127.0.0.1:{processes.free_port()}",
                "FAREGATE_ROUTER_ADDR": f"127.0.0.1:{processes.free_port()}",
                "FAREGATE_BILLING_ADDR": f"127.0.0.1:{processes.free_port()}",
            }
        )
        up = subprocess.Popen(
            [str(python), "-m", "faregate.cli", "up"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=open(home.with_name(f"{home.name}-up.log"), "wb"),
        )
        self.procs.append(up)
        url = f"http://127.0.0.1:{port}"
        processes.wait_http_ok(f"{url}/health", timeout=120)
        while not (home / "demo_key").exists():
            time.sleep(0.2)
        admin = (home / "admin_token").read_text().strip()
        account = post(f"{url}/admin/accounts", {"name": "bench", "plan": "unlimited"}, admin)
        post(f"{url}/admin/accounts/{account['id']}/credit", {"amount_usd": 100_000}, admin)
        key = post(f"{url}/admin/accounts/{account['id']}/keys", {"mode": "live"}, admin)["key"]
        return up, url, key

    def start_litellm(self, workers: int) -> tuple[subprocess.Popen[bytes], str]:
        from bench import litellm

        proc, url = litellm.start(self.work, self.upstream_port, self.stream_port, workers, self.slow_port)
        self.procs.append(proc)
        return proc, url

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                pids = tree(proc.pid)
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                for pid in pids[1:]:  # workers a supervisor left behind
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def measure(
    targets: dict[str, dict[str, Any]], concurrency: int, stream: bool = False, mcp: bool = False
) -> dict[str, dict]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for r in range(ROUNDS):
        for name in round_order(list(targets), r):
            t = targets[name]
            pids = t["pids"]()
            before = cpu_seconds(pids)
            model = "bench-stream" if stream else "bench-model"
            with PeakRss(t["pids"]) as rss:
                result = load(t["url"], t["key"], concurrency, SECONDS, stream=stream, model=model, mcp=mcp)
            result["cpu_ms_per_request"] = (cpu_seconds(pids) - before) * 1000 / max(result["requests"], 1)
            result["peak_rss_mb"] = rss.peak
            rows[name].append(result)
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            key: {
                "median": statistics.median(r[key] for r in runs),
                "min": min(r[key] for r in runs),
                "max": max(r[key] for r in runs),
            }
            for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "ttfb_p50_ms", "cpu_ms_per_request", "peak_rss_mb")
        }
        summary[name]["requests"] = sum(r["requests"] for r in runs)
        summary[name]["errors"] = sum(r["errors"] for r in runs)
    return summary


def round_order(names: list[str], r: int) -> list[str]:
    """Round r's order: the targets rotated by r (A B C D, B C D A, …), a baseline measured
    right beside faregate, after it in even rounds and before it in odd ones (A B, B A, …)."""
    pair = [n for n in names if is_faregate(n) and n != "faregate"]
    rest = [n for n in names if n not in pair]
    k = r % len(rest)
    rotated = rest[k:] + rest[:k]
    if not pair or "faregate" not in rotated:
        return rotated + pair
    i = rotated.index("faregate")
    both = ["faregate", *pair] if r % 2 == 0 else [*pair, "faregate"]
    return rotated[:i] + both + rotated[i + 1 :]


def faregate_target(up: subprocess.Popen[bytes], url: str, key: str, home: Path) -> dict[str, Any]:
    return {"url": f"{url}/v1/chat/completions", "key": key, "pids": lambda: tree(up.pid), "root": up, "home": home}


def build_baseline() -> Baseline | None:
    """BENCH_BASELINE's revision built (or reused) before anything is measured, or None."""
    return ensure(BASELINE_REV) if BASELINE_REV else None


def served(results: dict[str, Any], name: str) -> int:
    """Requests a target answered in the JSON and stream cells (the ones the ledger must hold)."""
    return sum(
        cell[name]["requests"]
        for kind in ("json", "stream", "mcp")
        for cell in results.get(kind, {}).values()
        if name in cell
    )


def mcp_url(chat_url: str) -> str:
    return chat_url.replace("/v1/chat/completions", "/v1/mcp")


def ledgers(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ledger check of each Faregate target: faregate, and the baseline when one ran."""
    out = {"faregate": results["ledger"]}
    if "baseline" in results:
        out[results["baseline"]["name"]] = results["baseline"]["ledger"]
    return out


def main() -> int:
    baseline = build_baseline()
    work = Path(tempfile.mkdtemp(prefix="faregate-bench-"))
    bench = Bench(work)
    results: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "quick": QUICK,
            "rounds": ROUNDS,
            "seconds_per_cell": SECONDS,
            "load_average_at_start": os.getloadavg()[0],
            "cells": CELLS_SPEC or "all",
        },
        "idle_rss_mb": {},
        "json": {},
        "stream": {},
        "mcp": {},
        "slow": {},
    }
    try:
        upstream = bench.start_upstream(bench.upstream_port, ["--chunks", str(STREAM_CHUNKS)])
        streamer = bench.start_upstream(bench.stream_port, ["--chunks", str(STREAM_CHUNKS)])
        slow_upstream = bench.start_upstream(bench.slow_port, ["--chunks", str(SLOW_CHUNKS), "--interval", "0.1"])
        print("the upstream alone, 64 in flight (it must not be the bottleneck) …", flush=True)
        alone = load(f"http://127.0.0.1:{bench.upstream_port}/v1/chat/completions", "x", 64, SECONDS)
        results["upstream_alone"] = {"rps": alone["rps"], "p50_ms": alone["p50_ms"]}
        print("starting Faregate …", flush=True)
        bench.write_catalog()
        up, url, key = bench.start_faregate(work / "home")
        targets: dict[str, dict[str, Any]] = {
            "direct": {
                "url": f"http://127.0.0.1:{bench.upstream_port}/v1/chat/completions",
                "stream_url": f"http://127.0.0.1:{bench.stream_port}/v1/chat/completions",
                "key": "x",
                "pids": lambda: [upstream.pid, streamer.pid],
            },
            "faregate": faregate_target(up, url, key, work / "home"),
        }
        if baseline:
            print(f"starting {baseline.name} ({baseline.rev}) …", flush=True)
            home = work / "home-baseline"
            b_up, b_url, b_key = bench.start_faregate(home, baseline.python, baseline.src)
            targets[baseline.name] = faregate_target(b_up, b_url, b_key, home)
            results["baseline"] = {"rev": baseline.rev, "commit": baseline.commit, "name": baseline.name}
        if WITH_LITELLM:
            from bench.litellm import MASTER_KEY

            for workers in (1, 2):
                print(f"starting LiteLLM with {workers} worker(s) …", flush=True)
                proc, lurl = bench.start_litellm(workers)
                targets[f"litellm-{workers}"] = {
                    "url": f"{lurl}/v1/chat/completions",
                    "key": MASTER_KEY,
                    "pids": (lambda p: lambda: tree(p.pid))(proc),
                }
        time.sleep(3)
        for name, t in targets.items():
            if name != "direct":
                results["idle_rss_mb"][name] = round(rss_mb(t["pids"]()), 1)
        for c in CELLS["json"]:
            print(f"non-streaming, {c} in flight …", flush=True)
            results["json"][str(c)] = measure(targets, c)
        stream_targets = {name: {**t, "url": t.get("stream_url", t["url"])} for name, t in targets.items()}
        for c in CELLS["stream"]:
            print(f"streaming ({STREAM_CHUNKS} chunks), {c} in flight …", flush=True)
            results["stream"][str(c)] = measure(stream_targets, c, stream=True)
        # MCP chat_completion beside a REST request: Faregate only (the baseline may predate
        # MCP; the other targets have no chat tool), so faregate's own JSON cell is the yardstick
        mcp_targets = {"faregate": {**targets["faregate"], "url": mcp_url(targets["faregate"]["url"])}}
        for c in CELLS["mcp"]:
            print(f"MCP chat_completion, {c} in flight …", flush=True)
            results["mcp"][str(c)] = measure(mcp_targets, c, mcp=True)
        results["ledger"] = check_ledger(work / "home" / "billing.db", served(results, "faregate"))
        if baseline:
            results["baseline"]["ledger"] = check_ledger(home / "billing.db", served(results, baseline.name))
        if not CELLS_SPEC:
            print("profiling Faregate at 16 in flight (py-spy) …", flush=True)
            results["profile"] = profile_faregate(up, targets["faregate"], work)
        # the floor first: the slow upstream and the generator alone hold the most streams asked of any target
        slow_targets = {
            "direct": {
                "url": f"http://127.0.0.1:{bench.slow_port}/v1/chat/completions",
                "key": "x",
                "pids": lambda: [slow_upstream.pid],
            },
            **{name: t for name, t in targets.items() if name != "direct"},
        }
        for name, t in slow_targets.items():
            for n in slow_levels(name):
                print(f"{n} slow streams through {name} …", flush=True)
                results["slow"].setdefault(name, []).append(slow_streams(t, n))
    finally:
        bench.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "latest.md").write_text(table(results))
    chart(results)
    print(table(results))
    return 0 if all(ledger["ok"] for ledger in ledgers(results).values()) else 1


def slow_streams(target: dict[str, Any], n: int) -> dict[str, Any]:
    """N concurrent slow streams through a target (bench/slow.py in its own process)."""
    argv = [sys.executable, "-m", "bench.slow", target["url"], target["key"], str(n)]
    argv += ["--ramp", "5" if n > 500 else "2", "--deadline", "120"]
    pids = target["pids"]()
    before = cpu_seconds(pids)
    with PeakRss(target["pids"]) as rss:
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    result["peak_rss_mb"] = round(rss.peak, 1)
    # chunks spaced 100 ms apart, as a model streams them: the per-chunk cost without bursts,
    # over every chunk the target relayed (streams cut short included)
    chunks = max(result.get("chunks", result["held"] * SLOW_CHUNKS), 1)
    result["cpu_us_per_chunk"] = round((cpu_seconds(pids) - before) * 1e6 / chunks, 1)
    return result


def profile_faregate(up: subprocess.Popen[bytes], target: dict[str, Any], work: Path) -> dict[str, Any]:
    """py-spy flame graphs of each Faregate service during a run at 16 in flight, and the
    top frames of each (saved under bench/results/profiles/)."""
    from bench import profile

    services = {}
    for pid in tree(up.pid):
        name = profile.service_name(pid)
        if name:
            services[name] = pid
    out_dir = RESULTS / "profiles"
    recording = profile.start(services, out_dir, seconds=max(SECONDS, 5))
    result = load(target["url"], target["key"], 16, max(SECONDS, 5) + 1)
    summary = profile.finish(recording)
    summary["requests"] = result["requests"]
    return summary


def check_ledger(db: Path, served: int) -> dict[str, Any]:
    """One usage record per answered Faregate request (the bench key's requests only)."""
    deadline = time.monotonic() + 60
    count = -1
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            count = conn.execute(
                "SELECT count(*) FROM usage_records WHERE model IN ('bench-model', 'bench-stream')"
            ).fetchone()[0]
        if count >= served:
            break
        time.sleep(0.5)
    return {"requests_answered": served, "usage_records": count, "ok": count == served}


def fmt(cell: dict[str, Any], key: str, digits: int = 1) -> str:
    return f"{cell[key]['median']:.{digits}f} ({cell[key]['min']:.{digits}f}–{cell[key]['max']:.{digits}f})"


def med(row: dict[str, Any], key: str) -> float:
    value: float = row[key]["median"]
    return value


def targets_met(r: dict[str, Any]) -> list[Row]:
    """The issue's targets: (target, wanted, measured, met); met None: a figure for reading.
    Only the targets whose cells ran (BENCH_CELLS may choose a few)."""
    spaced, held = _slow_targets(r)
    return [*_json_targets(r), *_burst_targets(r), *spaced, *_first_token_target(r), *held, _idle_target(r)]


def _json_targets(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    busy = [c for c in r["json"] if c != "1"]
    if busy:
        fg_cpu = max(med(r["json"][c]["faregate"], "cpu_ms_per_request") for c in busy)
        rows.append(("CPU per metered request", "≤ 1.0 ms", f"{fg_cpu:.2f} ms", fg_cpu <= 1.0))
    if "1" in r["json"]:
        one = r["json"]["1"]
        added = med(one["faregate"], "p50_ms") - med(one["direct"], "p50_ms")
        rows.append(("added p50 at 1 in flight", "≤ 2 ms", f"{added:.2f} ms", added <= 2.0))
    for c in busy:
        if "litellm-2" not in r["json"][c]:
            continue
        ratio = med(r["json"][c]["faregate"], "rps") / med(r["json"][c]["litellm-2"], "rps")
        lower = med(r["json"][c]["faregate"], "p99_ms") < med(r["json"][c]["litellm-2"], "p99_ms")
        rows.append(
            (
                f"req/s vs LiteLLM 2 workers at {c}",
                "≥ 5×, lower p99",
                f"{ratio:.1f}×, p99 {'lower' if lower else 'higher'}",
                ratio >= 5 and lower,
            )
        )
    return rows


def _burst_targets(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    if "16" in r["stream"]:
        per_chunk = med(r["stream"]["16"]["faregate"], "cpu_ms_per_request") * 1000 / STREAM_CHUNKS
        rows.append(
            ("CPU per relayed chunk (bursts, 16 in flight)", "≤ 100 µs", f"{per_chunk:.0f} µs", per_chunk <= 100)
        )
        if "16" in r["json"]:
            beyond = _beyond_json(r, "16")
            rows.append(("  the same, beyond a JSON request's own cost", "(no target)", f"{beyond:.0f} µs", None))
    return rows


def _first_token_target(r: dict[str, Any]) -> list[Row]:
    if "1" not in r["stream"]:
        return []
    st1 = r["stream"]["1"]
    ttfb = med(st1["faregate"], "ttfb_p50_ms") - med(st1["direct"], "ttfb_p50_ms")
    return [("first-token overhead p50 (1 in flight)", "≤ 2 ms", f"{ttfb:.2f} ms", ttfb <= 2.0)]


def _slow_targets(
    r: dict[str, Any],
) -> tuple[list[Row], list[Row]]:
    """The spaced-chunk CPU row and the slow-streams-held row, when slow streams ran."""
    spaced_rows: list[Row] = []
    held_rows: list[Row] = []
    slow = r["slow"].get("faregate") or []
    # spaced chunks at the smallest level (the machine not saturated, so nothing coalesces)
    spaced = [s for s in slow if s.get("held")]
    if spaced:
        first = min(spaced, key=lambda s: s["streams"])
        per = first["cpu_us_per_chunk"]
        spaced_rows.append(
            (
                f"CPU per relayed chunk (100 ms apart, {first['streams']:,} streams)",
                "≤ 100 µs",
                f"{per:.0f} µs",
                per <= 100,
            )
        )
    if slow:
        best = max(slow, key=lambda s: s["streams"])
        ok = best["held"] >= 5000 and best["peak_rss_mb"] < 1024
        held_rows.append(
            (
                "slow streams held",
                "≥ 5,000 with < 1 GiB RSS",
                f"{best['held']:,} of {best['streams']:,}, {best['peak_rss_mb']:.0f} MB",
                ok,
            )
        )
    return spaced_rows, held_rows


def _idle_target(r: dict[str, Any]) -> Row:
    idle = r["idle_rss_mb"]["faregate"]
    return ("idle RSS, all services", "< 400 MB", f"{idle:.0f} MB", idle < 400)


def _beyond_json(r: dict[str, Any], c: str) -> float:
    """CPU per chunk of a stream beyond what a JSON request costs at the same concurrency: the
    relaying alone (admission, routing and metering are the same for both)."""
    stream = med(r["stream"][c]["faregate"], "cpu_ms_per_request")
    whole = med(r["json"][c]["faregate"], "cpu_ms_per_request")
    return (stream - whole) * 1000 / STREAM_CHUNKS


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Faregate benchmark",
        "",
        f"{m['cores']} cores shared by the load generator, the upstreams and every target (load average "
        f"{m['load_average_at_start']:.1f} at the start); {m['rounds']} interleaved rounds × "
        f"{m['seconds_per_cell']:.0f} s per cell; medians (min–max). The fake upstream alone served "
        f"{r['upstream_alone']['rps']:.0f} req/s at 64 in flight."
        + (f" Cells: {m['cells']} (BENCH_CELLS)." if m.get("cells", "all") != "all" else ""),
        *json_table(r),
        *stream_table(r),
        *mcp_table(r),
        *slow_table(r),
        "",
        "Idle RSS of all of a target's processes: "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in r["idle_rss_mb"].items())
        + ".",
    ]
    lines += [
        f"Ledger of {name}: {ledger['usage_records']} usage records for {ledger['requests_answered']} "
        f"answered requests ({'one each' if ledger['ok'] else 'MISMATCH'})."
        for name, ledger in ledgers(r).items()
    ]
    lines += baseline_table(r)
    lines += [
        "",
        "## Targets (issue 6)",
        "",
        "| target | wanted | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t} | {w} | {v} | {'—' if ok is None else 'yes' if ok else '**no**'} |" for t, w, v, ok in targets_met(r)
    ]
    return "\n".join(lines + profile_lines(r)) + "\n"


def json_table(r: dict[str, Any]) -> list[str]:
    if not r["json"]:
        return []
    lines = [
        "",
        "| in flight | target | req/s | p50 ms | p90 ms | p99 ms | added p50 ms | CPU ms/request | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c, cell in r["json"].items():
        base = med(cell["direct"], "p50_ms")
        for name, row in cell.items():
            added = med(row, "p50_ms") - base
            lines.append(
                f"| {c} | {name} | {fmt(row, 'rps', 0)} | {fmt(row, 'p50_ms', 2)} | {fmt(row, 'p90_ms', 2)} "
                f"| {fmt(row, 'p99_ms', 2)} | {added:+.2f} | {fmt(row, 'cpu_ms_per_request', 2)} "
                f"| {med(row, 'peak_rss_mb'):.0f} |"
            )
    if any("litellm-2" in cell for cell in r["json"].values()):
        lines += [
            "",
            "Faregate ÷ LiteLLM with 2 workers, same run (medians):",
            "",
            "| in flight | req/s ratio | p99 ratio | CPU per request ratio |",
            "|---|---|---|---|",
        ]
        for c, cell in r["json"].items():
            fg, ll = cell["faregate"], cell["litellm-2"]
            lines.append(
                f"| {c} | {med(fg, 'rps') / med(ll, 'rps'):.2f}× | {med(fg, 'p99_ms') / med(ll, 'p99_ms'):.2f}× "
                f"| {med(fg, 'cpu_ms_per_request') / med(ll, 'cpu_ms_per_request'):.2f}× |"
            )
    return lines


def mcp_table(r: dict[str, Any]) -> list[str]:
    if not r.get("mcp"):
        return []
    lines = [
        "",
        "MCP `chat_completion` (a JSON-RPC `tools/call` over Streamable HTTP, the same gateway core) "
        "against a REST chat completion, same run:",
        "",
        "| in flight | MCP calls/s | MCP p50 ms | MCP CPU ms/call | REST CPU ms/request | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for c, cell in r["mcp"].items():
        row, rest = cell["faregate"], r["json"].get(c, {}).get("faregate")
        rest_cpu = med(rest, "cpu_ms_per_request") if rest else float("nan")
        lines.append(
            f"| {c} | {fmt(row, 'rps', 0)} | {fmt(row, 'p50_ms', 2)} | {fmt(row, 'cpu_ms_per_request', 2)} "
            f"| {rest_cpu:.2f} | {med(row, 'cpu_ms_per_request') / rest_cpu:.2f}× |"
        )
    return lines


def stream_table(r: dict[str, Any]) -> list[str]:
    if not r["stream"]:
        return []
    lines = [
        "",
        f"Streaming ({STREAM_CHUNKS} chunks sent back to back by the upstream):",
        "",
        "| in flight | target | streams/s | TTFB p50 ms | added TTFB ms | total p50 ms | CPU µs/chunk "
        "| beyond JSON µs/chunk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c, cell in r["stream"].items():
        base = med(cell["direct"], "ttfb_p50_ms")
        for name, row in cell.items():
            per_chunk = med(row, "cpu_ms_per_request") * 1000 / STREAM_CHUNKS
            json_cell = r["json"].get(c, {}).get(name)
            beyond = (
                (med(row, "cpu_ms_per_request") - med(json_cell, "cpu_ms_per_request")) * 1000 / STREAM_CHUNKS
                if json_cell
                else float("nan")
            )
            lines.append(
                f"| {c} | {name} | {fmt(row, 'rps', 0)} | {fmt(row, 'ttfb_p50_ms', 2)} "
                f"| {med(row, 'ttfb_p50_ms') - base:+.2f} | {fmt(row, 'p50_ms', 2)} | {per_chunk:.0f} | {beyond:.0f} |"
            )
    return lines


def slow_table(r: dict[str, Any]) -> list[str]:
    if not r["slow"]:
        return []
    lines = [
        "",
        "Slow streams (a chunk every 100 ms for 30 s, all opened within seconds):",
        "",
        "| target | streams | held to the end | other outcomes | peak open | took s | peak RSS MB | CPU µs/chunk |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in r["slow"].items():
        for s in runs:
            other = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items() if k != "held") or "—"
            lines.append(
                f"| {name} | {s['streams']:,} | {s['held']:,} | {other} | {s['peak_open']:,} | {s['seconds']} "
                f"| {s['peak_rss_mb']:.0f} | {s['cpu_us_per_chunk']:.0f} |"
            )
    return lines


def profile_lines(r: dict[str, Any]) -> list[str]:
    prof = r.get("profile") or {}
    if not prof.get("top"):
        return []
    lines = [
        "",
        "## Where Faregate's CPU goes (py-spy, 16 in flight; flame graphs in `bench/results/profiles/`)",
        "",
    ]
    for name, top in sorted(prof["top"].items()):
        lines.append(f"**{name}** — self: " + "; ".join(f"{f} {p}%" for f, p in top["self"][:4]))
        lines.append("")
        lines.append("inclusive: " + "; ".join(f"{f} {p}%" for f, p in top["inclusive"][:6]))
        lines.append("")
    return lines


def ratio(current: dict[str, Any], baseline: dict[str, Any], key: str) -> float:
    return med(current, key) / max(med(baseline, key), 1e-9)


def baseline_table(r: dict[str, Any]) -> list[str]:
    """The current tree against the baseline, cell by cell (issue 16 item 7: no slower), or
    nothing when no baseline ran."""
    if "baseline" not in r:
        return []
    b = r["baseline"]
    name = b["name"]
    lines = [
        "",
        f"## Against the baseline {name} (BENCH_BASELINE={b['rev']}, commit {b['commit']})",
        "",
        f"Same run, same upstreams and load generator, {name} measured right beside faregate in every "
        "round (after it in even rounds, before it in odd ones); medians (min–max) over rounds. Within 5%: "
        f"faregate's CPU per metered request ≤ {NO_SLOWER:.2f} × the baseline's (faster is within), "
        f"asked at {' and '.join(NO_SLOWER_AT)} in flight without streaming.",
        "",
        f"| cell | CPU ms/request faregate | CPU ms/request {name} | CPU ratio | req/s faregate | req/s {name} "
        "| within 5% |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in ("json", "stream"):
        for c, cell in r[kind].items():
            current, base = cell["faregate"], cell[name]
            cpu = ratio(current, base, "cpu_ms_per_request")
            asked = kind == "json" and c in NO_SLOWER_AT
            within = ("yes" if cpu <= NO_SLOWER else "**no**") if asked else "—"
            lines.append(
                f"| {kind} {c} | {fmt(current, 'cpu_ms_per_request', 3)} | {fmt(base, 'cpu_ms_per_request', 3)} "
                f"| {cpu:.3f}× | {fmt(current, 'rps', 0)} | {fmt(base, 'rps', 0)} | {within} |"
            )
    return [*lines, "", no_slower_verdict(r, name)]


def no_slower_verdict(r: dict[str, Any], name: str) -> str:
    """One line: is faregate's CPU per metered request within 5% of the baseline's at 16 and 64?"""
    measured = [c for c in NO_SLOWER_AT if c in r["json"]]
    if not measured:
        return (
            f"No slower (issue 16 item 7): not measured in this run (it needs json:{' and json:'.join(NO_SLOWER_AT)})."
        )
    ratios = {c: ratio(r["json"][c]["faregate"], r["json"][c][name], "cpu_ms_per_request") for c in measured}
    ok = all(v <= NO_SLOWER for v in ratios.values())
    missing = [c for c in NO_SLOWER_AT if c not in measured]
    return (
        f"No slower than {name} (issue 16 item 7, CPU per metered request within 5%): "
        f"{'**yes**' if ok else '**no**'} ("
        + ", ".join(f"{v:.3f}× at {c}" for c, v in ratios.items())
        + (f"; {', '.join(missing)} in flight not measured" if missing else "")
        + ")."
    )


def chart(r: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install '.[bench]')")
        return
    conc = list(r["json"])
    if not conc:
        return
    names = list(r["json"][conc[0]])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        style = {"marker": "o", "label": name, "color": palette[i % len(palette)]}  # one colour per target
        a.plot(conc, [med(r["json"][x][name], "rps") for x in conc], **style)
        b.plot(conc, [med(r["json"][x][name], "p99_ms") for x in conc], **style)
        if name != "direct":  # the upstream alone: no gateway to charge
            c.plot(conc, [med(r["json"][x][name], "cpu_ms_per_request") for x in conc], **style)
    a.set(title="requests/s", xlabel="in flight", yscale="log")
    b.set(title="p99 latency, ms", xlabel="in flight", yscale="log")
    c.set(title="CPU ms per request (all processes)", xlabel="in flight", yscale="log")
    a.legend()
    c.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png", dpi=100)


if __name__ == "__main__":
    sys.exit(main())
