"""``rtxpack`` command line: thin. Parse, call the library, print text or ``--json``, map errors.

Every command lives in this package, one module per group, registered explicitly below:
``machine`` (detect, selftest), ``installer`` (resolve, install, cache), ``farm`` (plan, build,
merge, bundle, inspect, warm), ``keys`` (keygen, sign). Known errors print one line plus the fix
and exit 1; ``RTXPACK_DEBUG=1`` shows the traceback. No library module imports this package.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from .. import __version__
from ..core import config
from ..core.errors import ConfigError, RtxpackError
from . import farm, installer, keys, machine
from .output import harden_streams, safe_text

GROUPS = (machine, installer, farm, keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtxpack", description="Ship GPU inference artifacts to NVIDIA PCs.")
    parser.add_argument("--version", action="version", version=f"rtxpack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub)
    return parser


def _debug() -> bool:
    try:
        return config.debug()
    except ConfigError:
        return False   # a bad RTXPACK_DEBUG is reported like any other bad variable, not here


def main(argv: Sequence[str] | None = None) -> int:
    harden_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RtxpackError as e:
        if _debug():
            raise
        if getattr(args, "json", False):
            print(json.dumps(e.to_dict(), indent=2, default=str))
        else:
            print(f"rtxpack: error: {safe_text(e.message)}", file=sys.stderr)
            if e.fix:
                print(f"  fix: {safe_text(e.fix)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rtxpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
