"""The demo's command-line options, shared by ``rtxpack demo`` and ``python -m rtxpack.demo``
(argparse only: the CLI registers them at start-up)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (also ``python -m rtxpack.demo``'s)."""
    p.add_argument("--gpu", default="8.9", help="compute capability to pretend this PC has (RTXPACK_DEVICE); "
                                                 "7.5 gets the Turing engine, 9.0 shows the fallback message")
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--dir", type=Path, default=None,
                   help="work folder to keep (models/, repo/, rtxpack.pub); default: a temporary one, removed")
    p.add_argument("-j", "--jobs", type=int, default=2, help="cells built in parallel")
    p.add_argument("--force", action="store_true", help="use a non-empty --dir the demo did not make")
