"""How every command prints: human text or ``--json`` (one helper), and errors as one line plus the fix."""
from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from typing import Any, Callable

#: C0/C1 controls, DEL, bidirectional and zero-width format characters, lone surrogates (bytes that
#: were not valid UTF-8): what could move the cursor, recolour or reorder a terminal, or crash print
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")
_UNSAFE_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069"
                                "\ufeff\ud800-\udfff]")


def _escape(m: "re.Match[str]") -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def safe_text(value: Any, *, keep_newlines: bool = False) -> str:
    """``value`` as text that is safe to print: control and format characters (escape sequences,
    bidi overrides, zero-width characters) and lone surrogates escaped as ``\\xNN`` / ``\\uNNNN``.
    For strings that come from a manifest, a server or a file name; ``keep_newlines`` keeps line
    breaks and tabs of a multi-line text we formatted ourselves."""
    text = value if isinstance(value, str) else str(value)
    return (_UNSAFE_KEEP_LINES if keep_newlines else _UNSAFE).sub(_escape, text)


def harden_streams() -> None:
    """Printing never crashes on a character the terminal cannot encode (it is backslash-escaped),
    and warnings print as one ``rtxpack: warning: ...`` line."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        text = safe_text(message).removeprefix("rtxpack: ")
        print(f"rtxpack: warning: {text}", file=file or sys.stderr)

    warnings.showwarning = show


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str] | None = None) -> None:
    """Print ``data`` as JSON under ``--json``, else the human ``text`` (nothing when it is None)."""
    if wants_json(args):
        print(json.dumps(data, indent=2, default=str))
    elif text is not None:
        print(safe_text(text() if callable(text) else text, keep_newlines=True))


def say(args: argparse.Namespace) -> Callable[[str], None] | None:
    """A progress printer on stderr, or None under ``--json`` (stdout carries only the JSON)."""
    if wants_json(args):
        return None
    return lambda msg: print(safe_text(msg, keep_newlines=True), file=sys.stderr, flush=True)


def add_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trusted-key", action="append", default=[], metavar="FILE",
                   help="pinned ed25519 public key (repeatable; also RTXPACK_TRUSTED_KEYS)")
    p.add_argument("--require-signed", action="store_true", default=None,
                   help="refuse repositories not signed by a trusted key (also RTXPACK_REQUIRE_SIGNED=1)")
    p.add_argument("--max-manifest-age", type=str, default=None, metavar="DAYS",
                   help="refuse a manifest signed longer ago than DAYS (also RTXPACK_MAX_MANIFEST_AGE_DAYS)")


def trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "trusted_key", None):
        out["trusted_keys"] = list(args.trusted_key)
    if getattr(args, "require_signed", None):
        out["require_signed"] = True
    if getattr(args, "max_manifest_age", None) is not None:
        out["max_manifest_age_days"] = args.max_manifest_age
    return out
