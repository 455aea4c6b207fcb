"""The command line every stage shares: its settings as ``--params`` JSON and ``--threads``."""

from __future__ import annotations

import argparse
import json


def parse_stage_args(ap: argparse.ArgumentParser, argv: list[str] | None,
                     threads: int | None = None,
                     params_help: str = "the stage's settings as JSON") -> argparse.Namespace:
    """Add ``--params`` and ``--threads`` to a stage's parser, parse ``argv`` and apply the
    thread count to torch (``threads`` is the default; None keeps torch's own)."""
    ap.add_argument("--params", type=json.loads, required=True, help=params_help)
    ap.add_argument("--threads", type=int, default=threads,
                    help="CPU threads for torch (the rule passes the job's threads)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch  # only stages that run models pass threads; importing torch is slow

        torch.set_num_threads(args.threads)
    return args
