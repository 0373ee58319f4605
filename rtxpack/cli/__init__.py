"""``rtxpack`` command line: thin. Parse, call the library, print text or ``--json``, map errors.

Every command lives in this package, one module per group, registered explicitly below:
``machine`` (detect, selftest), ``installer`` (resolve, install, cache), ``farm`` (plan, build,
merge, bundle, publish, inspect, warm), ``keys`` (keygen, sign), ``demo`` (the embedded example). Every mistake prints one
line plus the fix (JSON on stdout under ``--json``) and exits 1: library errors, arguments the
parser refuses, paths the system refuses; ``RTXPACK_DEBUG=1`` shows the traceback. No library
module imports this package.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import NoReturn, Sequence

from .. import __version__
from ..core import config
from ..core.errors import ConfigError, RtxpackError
from . import demo, farm, installer, keys, machine
from .output import format_warning, harden_streams, os_error, print_error, unexpected

GROUPS = (machine, installer, farm, keys, demo)


class UsageError(ConfigError):
    """An argument the parser refused (unknown option, missing value, bad choice)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a refused argument raises :class:`UsageError` (printed like every other error)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]          # "rtxpack cache prune" -> "cache prune"
        raise UsageError(f"{command}: {message}" if command else message,
                         fix=f"`{self.prog} --help` lists the arguments")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="rtxpack", description="Ship GPU inference artifacts to NVIDIA PCs.")
    parser.add_argument("--version", action="version", version=f"rtxpack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub)
    return parser


def _debug() -> bool:
    try:
        return config.debug()
    except RtxpackError:
        return False


def _json_anywhere(argv: list[str]) -> list[str]:
    """``rtxpack --json install ...`` means ``rtxpack install ... --json``: every command takes --json,
    and a hurried user puts it first."""
    k = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if "--json" not in argv[:k] or k == len(argv):
        return argv
    return [a for a in argv[:k] if a != "--json"] + argv[k:] + ["--json"]


def main(argv: Sequence[str] | None = None) -> int:
    harden_streams()
    argv = _json_anywhere(list(sys.argv[1:] if argv is None else argv))
    as_json = "--json" in argv
    with warnings.catch_warnings():
        warnings.showwarning = format_warning
        try:
            args = build_parser().parse_args(argv)
            as_json = bool(getattr(args, "json", as_json))
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("rtxpack: interrupted", file=sys.stderr)
            return 130
        except SystemExit:
            raise                                   # --help, --version
        except BaseException as e:  # noqa: BLE001 - every error leaves as one line (the traceback on demand)
            if _debug():
                raise
            if isinstance(e, RtxpackError):
                err = e
            elif isinstance(e, OSError):
                err = os_error(e)
            elif isinstance(e, Exception):
                err = unexpected(e)
            else:
                raise
            print_error(err, as_json)
            return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
