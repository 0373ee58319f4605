"""``rtxpack demo``: the farm-to-PC story on a generated example (see :mod:`rtxpack.demo.flow`)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..demo.options import add_arguments
from .output import add_json, emit, wants_json


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo.flow import run_demo

    # the story goes to stdout as text; under --json it goes to stderr and stdout holds the summary
    say = (lambda s: print(s, file=sys.stderr)) if wants_json(args) else print
    summary = run_demo(workdir=args.dir, gpu=args.gpu, model=args.model, jobs=args.jobs, force=args.force, say=say)
    emit(args, summary)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the embedded example: plan, build, sign, serve, install for a forced GPU")
    add_arguments(p)
    add_json(p)
    p.set_defaults(func=cmd_demo)
