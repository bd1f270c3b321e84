"""LiteLLM's proxy as a benchmark target: its own venv under bench/, pointed at our upstream.

The venv is made on first use (``pip install 'litellm[proxy]'`` pinned to LITELLM_VERSION,
from the package registry) and reused after. LiteLLM runs the way its docs suggest for a
proxy without a database: a master key, no retries, its price map from the package (not
fetched), its per-request log off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from faregate import processes

VENV = Path(__file__).resolve().parent / ".venv-litellm"
LITELLM_VERSION = ">=1.106,<1.107"
MASTER_KEY = "sk-bench-master"


def ensure_venv() -> Path:
    """The litellm executable, installing it first if needed (shows pip's progress)."""
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing LiteLLM {LITELLM_VERSION} into {VENV.name}/ (first run only) …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "on"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"litellm[proxy]{LITELLM_VERSION}"], check=True)
    return exe


def config(upstream_port: int, stream_port: int, slow_port: int) -> str:
    models = []
    for name, port in (("bench-model", upstream_port), ("bench-stream", stream_port), ("bench-slow", slow_port)):
        models.append(
            f"""  - model_name: {name}
    litellm_params:
      model: openai/bench-upstream
      api_base: http://127.0.0.1:{port}/v1
      api_key: sk-unused"""
        )
    return (
        "model_list:\n"
        + "\n".join(models)
        + f"""
litellm_settings:
  num_retries: 0
  request_timeout: 600
general_settings:
  master_key: {MASTER_KEY}
"""
    )


def start(
    work: Path, upstream_port: int, stream_port: int, workers: int, slow_port: int
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``litellm --num_workers N``; returns the process (its tree is the target) and URL."""
    exe = ensure_venv()
    cfg = work / f"litellm-{workers}.yaml"
    cfg.write_text(config(upstream_port, stream_port, slow_port))
    port = processes.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FAREGATE_", "VIRTUAL_ENV"))},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",
        "PATH": f"{VENV / 'bin'}:{os.environ.get('PATH', '')}",
    }
    log = open(work / f"litellm-{workers}.log", "wb")
    proc = subprocess.Popen(
        [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", str(workers)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"LiteLLM exited with {proc.returncode}; see {log.name}")
        try:
            req = urllib.request.Request(f"{url}/health/liveliness")
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("LiteLLM did not become ready within 180 s")
