"""BENCH_BASELINE: Faregate as it was at an earlier git revision, built beside the bench.

The revision's tree is exported with ``git archive`` into ``bench/.baseline/<commit>/src``
(gitignored; no worktree is registered, so ``git worktree list`` is untouched and nothing
lands among the tracked files), given its own venv there (``python -m venv``, then
``pip install -e 'src[dev]'`` as ``make setup`` does; only the package registry is needed)
and its own stubs (its own ``scripts/gen_protos.py``). A stamp marks the build complete, so
the same commit asked again, under any name, is reused; a build cut short is redone.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILDS = Path(__file__).resolve().parent / ".baseline"


@dataclass(frozen=True)
class Baseline:
    rev: str  # as asked: a hash, HEAD~1, main
    commit: str  # the full hash it named
    short: str
    src: Path  # the exported tree, the cwd its processes run in
    python: Path  # its venv's interpreter

    @property
    def name(self) -> str:
        return f"faregate@{self.short}"


def git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"BENCH_BASELINE: git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def resolve(rev: str) -> tuple[str, str]:
    """The full and the short hash of the commit a revision names."""
    commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return commit, git("rev-parse", "--short", commit)


def export(commit: str, src: Path) -> None:
    """The commit's tracked files into src (git archive piped to tar)."""
    src.mkdir(parents=True)
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"BENCH_BASELINE: git archive {commit} failed")


def make_venv(venv: Path, src: Path) -> Path:
    """A venv with the exported tree installed editable, as `make setup` installs the current one."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--progress-bar", "on"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{src}[dev]"], check=True)
    return python


def gen_stubs(python: Path, src: Path) -> None:
    """The revision's gRPC stubs, made by its own generator in its own venv."""
    subprocess.run([str(python), "scripts/gen_protos.py"], cwd=src, check=True)


def ensure(rev: str) -> Baseline:
    """The built baseline for a revision, building it first if this commit has none yet."""
    commit, short = resolve(rev)
    build = BUILDS / commit
    baseline = Baseline(rev, commit, short, build / "src", build / "venv" / "bin" / "python")
    stamp = build / ".built"
    if stamp.exists():
        print(f"baseline {baseline.name} ({rev}): reusing {build.relative_to(ROOT)}", flush=True)
        return baseline
    shutil.rmtree(build, ignore_errors=True)  # a build cut short
    print(
        f"building baseline {baseline.name} ({rev} = {commit}) into {build.relative_to(ROOT)}: "
        "git archive, its own venv (pip install -e), its own stubs …",
        flush=True,
    )
    export(commit, baseline.src)
    make_venv(build / "venv", baseline.src)
    gen_stubs(baseline.python, baseline.src)
    stamp.write_text(f"{rev}\n")
    return baseline
