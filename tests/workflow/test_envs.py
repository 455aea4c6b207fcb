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

