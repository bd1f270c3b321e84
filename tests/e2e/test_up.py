"""`faregate up`, as a new user runs it: private NATS, SQLite, a banner with a working curl line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from faregate import processes

pytestmark = pytest.mark.e2e


def test_up_starts_everything_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    port = processes.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAREGATE_")}
    env.update(
        {
            "FAREGATE_HOME": str(tmp_path / "home"),
            "FAREGATE_HTTP_ADDR": f"127.0.0.1:{port}",
            "FAREGATE_AUTH_ADDR": f"127.0.0.1:{processes.free_port()}",
            "FAREGATE_ROUTER_ADDR": f"127.0.0.1:{processes.free_port()}",
            "FAREGATE_BILLING_ADDR": f"127.0.0.1:{processes.free_port()}",
        }
    )
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "faregate.cli", "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.2)
        banner = (tmp_path / "up.log").read_text()
        url = f"http://127.0.0.1:{port}"
        assert url in banner
        admin_token = re.search(r"admin token:\s+(\S+)", banner).group(1)
        assert admin_token == (tmp_path / "home" / "admin_token").read_text().strip()
        key = re.search(r"Bearer (gw_test_\w+)", banner).group(1)
        resp = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "faregate/echo", "messages": [{"role": "user", "content": "Hello, Faregate"}]},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "Hello, Faregate"
        assert (tmp_path / "home" / "auth.db").exists() and (tmp_path / "home" / "nats").is_dir()
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        code = proc.wait(30)
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output
    # services stop before their NATS: no failed reconnects, no drain cut short by a kill
    assert "Traceback" not in output and " ERROR " not in output, output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
