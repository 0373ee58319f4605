"""Commands about this machine: ``detect`` and ``selftest``."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from .output import add_json, emit


def cmd_detect(args: argparse.Namespace) -> int:
    from ..core.device import detect

    dev = detect()
    d = dev.to_dict()

    def text() -> str:
        lines = [f"os: {dev.os}" + (f"   (from {dev.source})" if dev.source != "detected" else "")]
        if not dev.gpus:
            lines.append("gpus: none" + (f" ({dev.notes[0]})" if dev.notes else ""))
        for g in dev.gpus:
            mem = f", {g.memory_bytes / 2**30:.1f} GiB" if g.memory_bytes else ""
            drv = f", CUDA driver {g.driver_version}" if g.driver_version else ""
            lines.append(f"gpu {g.index}: {g.name}  CC {g.compute_capability}{mem}{drv}  {g.uuid or ''}".rstrip())
        for name, ver in dev.backends:
            lines.append(f"backend {name}: {ver or 'not installed'}")
        return "\n".join(lines)

    emit(args, d, text)
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from ..installer.selftest import run_selftest

    report = run_selftest(progress=None if args.json else (lambda line: print(line, file=sys.stderr)))
    emit(args, report, report["summary"])   # the steps were printed live on stderr
    return 0 if report["ok"] else 1


def register(sub: Any) -> None:
    p = sub.add_parser("detect", help="describe this machine's GPUs, OS and installed backends")
    add_json(p)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("selftest", help="build, refit, cache and run a small model on this machine; pass/fail per step")
    add_json(p)
    p.set_defaults(func=cmd_selftest)
