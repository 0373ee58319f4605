"""How every command prints: human text or ``--json`` (one helper), and errors as one line plus the fix."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str] | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else the human ``text`` (nothing when it is None)."""
    if wants_json(args):
        print(json.dumps(data, indent=2, default=str))
    elif text is not None:
        print(text() if callable(text) else text)


def say(args: argparse.Namespace) -> Callable[[str], None] | None:
    """A progress printer on stderr, or None under ``--json`` (stdout carries only the JSON)."""
    if wants_json(args):
        return None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def add_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trusted-key", action="append", default=[], metavar="FILE",
                   help="pinned ed25519 public key (repeatable; also RTXPACK_TRUSTED_KEYS)")
    p.add_argument("--require-signed", action="store_true", default=None,
                   help="refuse repositories not signed by a trusted key (also RTXPACK_REQUIRE_SIGNED=1)")


def trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "trusted_key", None):
        out["trusted_keys"] = list(args.trusted_key)
    if getattr(args, "require_signed", None):
        out["require_signed"] = True
    return out
