#!/usr/bin/env python3
"""Stand-in for the slurm commands (sbatch, sacct, squeue, ...), linked under their names.

Each call is appended to $SLURM_STUB_LOG as JSON (command, arguments). ``sbatch`` answers
with a new job id; ``sacct`` reports every submitted job as FAILED, so Snakemake stops after
submitting what was ready; ``sacctmgr``/``sacct -o Account`` name $SLURM_STUB_ACCOUNT.
"""
import json
import os
import sys

name = os.path.basename(sys.argv[0])
log = os.environ["SLURM_STUB_LOG"]
with open(log, "a") as fh:
    fh.write(json.dumps({"cmd": name, "args": sys.argv[1:]}) + "\n")
submitted = [ln for ln in open(log) if '"cmd": "sbatch"' in ln]
if name == "sbatch":
    print(1000 + len(submitted))
elif name == "sacct" and "JobIdRaw,State" in " ".join(sys.argv):
    for i in range(len(submitted)):
        print(f"{1001 + i}|FAILED")
elif name in ("sacctmgr", "sacct"):
    print(os.environ.get("SLURM_STUB_ACCOUNT", "proj"))
