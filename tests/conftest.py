"""Shared fixtures (a small tiny world and tokenizer, built once per test module) and helpers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

SMALL_WORLD = {
    "seed": 7,
    "openthoughts_math": 60,
    "openthoughts_nonmath": 10,
    "openthoughts_duplicates": 5,
    "dapo": 50,
    "deepmath": 40,
    "deepmath_exact_dups": 8,
    "deepmath_paraphrase_dups": 6,
    "probe_per_level": 4,
    "triple_share": 0.5,
    "benchmarks": {"aime24": 6, "aime25": 6, "amc23": 8},
}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    from opd.stages.tiny.build_tiny_world import build

    out = tmp_path_factory.mktemp("world")
    build(out, SMALL_WORLD)
    return out


@pytest.fixture(scope="module")
def small_tokenizer(small_world, tmp_path_factory) -> Path:
    from opd.stages.tiny.build_tiny_tokenizer import main

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    main(["--world", str(small_world), "--out", str(out), "--params", '{"vocab_size": 600}'])
    return out


def schema_section(name: str, **values):
    """A config section with the given values and every other key at its schema default."""
    from opd.core.config import section

    return section(name, values)


def tiny_recipe(recipe: dict) -> dict:
    """A tiny-model recipe (its arch given as a dict) with schema defaults filled in, as the
    workflow passes it to build_tiny_models."""
    from opd.core.config import validate

    section = validate({"world": "tiny", "tiny_models": {
        "archs": {"a": recipe["arch"]}, "models": {"m": {**recipe, "arch": "a"}}}})["tiny_models"]
    return {**section["models"]["m"], "arch": section["archs"]["a"]}


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc (torchrun starts its workers in sessions of
    their own, so killing its process group leaves them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` (started with ``start_new_session=True``) and every process below it."""
    below = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL ``proc`` (started with ``start_new_session=True``) and every process below it
    as soon as ``ready()`` holds; fails if the process finished first."""
    deadline = time.time() + timeout
    while not ready() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    _stop(proc)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def copy_workflow(dest: Path) -> Path:
    """A scratch copy of the workflow (Snakefile, rules, schema, configs, envs) to run in."""
    for item in ("Snakefile", "workflow", "config", "envs"):
        src = REPO / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item)
    return dest


def cache_released(work: Path, configfile: str = "config/paper.yaml") -> list[str]:
    """Empty stand-ins for a config's released files in its offline cache, so that a dry run
    with ``offline=true`` plans without the network; returns the ``--config`` override."""
    import yaml

    cfg = yaml.safe_load((work / configfile).read_text())
    cache = work / cfg.get("released_cache", "released")
    cache.mkdir(parents=True, exist_ok=True)
    for name, spec in cfg.get("released", {}).items():
        (cache / (name + os.path.splitext(spec["url"])[1])).touch()
    return ["--config", "offline=true"]


def snakemake_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """This environment's snakemake with ``args``, and an environment with its bin directory
    first on PATH."""
    exe = Path(sys.executable).with_name("snakemake")
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}
    return [str(exe), *args], env


def run_snakemake(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run this environment's snakemake in ``cwd``."""
    cmd, env = snakemake_command(args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session", autouse=True)
def _tiny_pipeline(request, tmp_path_factory):
    """The whole default tiny pipeline, started through Snakemake in a scratch copy of the
    workflow when the session begins, if a collected test reads it (``finished_run``), so
    that the other tests run alongside its jobs instead of before or after them. Stopped at
    the session's end if still running. Yields the scratch copy and the process, or None."""
    needed = any("finished_run" in getattr(item, "fixturenames", ())
                 for item in request.session.items)
    if not needed or os.environ.get("OPD_TINY_RUN"):
        yield None
        return
    work = copy_workflow(tmp_path_factory.mktemp("e2e"))
    cmd, env = snakemake_command(["--cores", "2"])
    with open(work / "pipeline.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield work, proc
    finally:
        if proc.poll() is None:
            _stop(proc)


@pytest.fixture(scope="session")
def finished_run(_tiny_pipeline) -> Path:
    """The finished tiny pipeline's scratch copy (slow: the end-to-end tests and the vLLM
    tests read its results); it waits for the run ``_tiny_pipeline`` started.
    ``OPD_TINY_RUN=<dir>`` reads a finished run's scratch copy instead (development)."""
    if os.environ.get("OPD_TINY_RUN"):
        return Path(os.environ["OPD_TINY_RUN"])
    work, proc = _tiny_pipeline
    try:
        proc.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        _stop(proc)
    log = (work / "pipeline.log").read_text()
    assert proc.returncode == 0, log[-4000:]
    return work
