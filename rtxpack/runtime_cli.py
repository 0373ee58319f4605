"""CLI commands of the app-runtime layer: ``warm`` (farm GPU nodes) and ``selftest`` (any machine)."""
from __future__ import annotations

import argparse
import sys
from typing import Any


def cmd_warm(args: argparse.Namespace) -> int:
    from .cli import emit
    from .warm import warm

    progress = None if args.json else (lambda msg: print(msg, file=sys.stderr))
    results = warm(args.config, args.repo, progress=progress)
    data = {"warmed": sum(r.status == "warmed" for r in results), "skipped": sum(r.status == "skipped" for r in results),
            "failed": sum(r.status == "failed" for r in results), "engines": [r.to_dict() for r in results]}
    emit(args, data, lambda: "\n".join([f"{r.status:<8} {r.engine}: {r.reason}" for r in results]
                                       + [f"{data['warmed']} warmed, {data['skipped']} skipped, {data['failed']} failed"]))
    return 1 if data["failed"] else 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from .cli import emit
    from .selftest import run_selftest

    report = run_selftest(progress=None if args.json else (lambda line: print(line, file=sys.stderr)))
    emit(args, report, report["summary"])   # the steps were printed live on stderr
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    from .cli import add_json

    p = sub.add_parser("warm", help="run warm-up shapes on this GPU and add runtime caches to a repository")
    p.add_argument("config", help="rtxpack.toml (for the ONNX files and warm-up shapes)")
    p.add_argument("--repo", required=True, help="repository directory to add runtime caches to")
    add_json(p)
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser("selftest", help="build, refit, cache and run a small model on this machine; pass/fail per step")
    add_json(p)
    p.set_defaults(func=cmd_selftest)
