"""``python -m tests.drill``: run the fault drill and print its table (see tests/drill/__init__.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.drill.run import Config, Row, run_drill, table
from tests.drill.setups import Setup, embedded, machine, machine_urls, unreachable


def _say(line: str) -> None:
    print(line, flush=True)


def _setups(names: list[str], base: Path) -> Iterator[tuple[str, contextlib.AbstractContextManager[Setup] | str]]:
    for name in names:
        home = base / name
        if name == "embedded":
            yield name, embedded(home)
        else:
            urls = machine_urls()
            down = unreachable(*urls)
            yield name, f"skipped: {down} unreachable" if down else machine(home, *urls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.drill", description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000, help="at least this many per set-up")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs of each of edge, router, auth, billing")
    parser.add_argument("--nats-restarts", type=int, default=2, help="of the drill's own nats-server")
    parser.add_argument("--setups", default="embedded,machine", help="comma-separated: embedded, machine")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' homes (logs, SQLite files)")
    args = parser.parse_args(argv)
    seed = int(os.environ.get("FAREGATE_DRILL_SEED") or secrets.randbelow(2**32))
    config = Config(args.requests, args.clients, args.kills, args.nats_restarts, seed)
    _say(f"fault drill: seed {seed} (FAREGATE_DRILL_SEED={seed} replays it), {config}")
    base = Path(tempfile.mkdtemp(prefix="faregate-drill-"))
    rows: list[Row] = []
    skipped: list[str] = []
    began = time.monotonic()
    for name, setup in _setups(args.setups.split(","), base):
        if isinstance(setup, str):
            skipped.append(f"{name}: {setup}")
            _say(f"[{name}] {setup}")
            continue
        with setup as s:
            rows.append(run_drill(s, config, base / name, _say))
    _say(f"\nfault drill, seed {seed}, {time.monotonic() - began:.0f}s\n{table(rows)}")
    for row in rows:
        for note in row.notes:
            _say(f"  {row.setup}: {note}")
        if row.lost:
            _say(f"  {row.setup}: lost request ids (first 10): {', '.join(row.lost[:10])}")
        if row.doubled:
            _say(f"  {row.setup}: doubled request ids (first 10): {', '.join(row.doubled[:10])}")
    for line in skipped:
        _say(f"  {line}")
    if args.keep:
        _say(f"  stacks' logs under {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
