"""`snakemake --lint` on the tiny and the paper config: every finding fails CI."""

from __future__ import annotations

import pytest

from conftest import copy_workflow, run_snakemake


@pytest.mark.parametrize("configfile", [None, "config/paper.yaml"])
def test_snakemake_lint_finds_nothing(configfile, tmp_path):
    work = copy_workflow(tmp_path)
    args = ["--lint"] + (["--configfile", configfile] if configfile else [])
    proc = run_snakemake(args, work)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-4000:]
    assert "in a good condition" in out
