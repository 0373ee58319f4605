"""Compute capabilities and version numbers as comparable values (pure, no I/O)."""
from __future__ import annotations

import re
from typing import Sequence

_CC = re.compile(r"(\d{1,2})\.(\d)")


def parse_cc(cc: str | float | Sequence[int]) -> tuple[int, int]:
    """``"8.9"`` / ``(8, 9)`` / ``"sm_89"`` -> ``(8, 9)``; ValueError for anything else.

    A float (``8.9`` from a TOML or JSON number) is refused: ``12.0`` would read back as ``12.0``
    but ``7.50`` or ``8.90`` cannot be told from each other, so callers must pass strings.
    """
    if isinstance(cc, bool):
        raise ValueError(f"{cc!r} is not a compute capability such as '8.9'")
    if isinstance(cc, (tuple, list)) and len(cc) == 2 and all(isinstance(x, int) for x in cc):
        return int(cc[0]), int(cc[1])
    if not isinstance(cc, str):
        raise ValueError(f"{cc!r} is not a compute capability such as '8.9' (write it as a string)")
    s = cc.strip().lower()
    if s.startswith("sm_") or s.startswith("sm"):
        digits = s[3:] if s.startswith("sm_") else s[2:]
        if digits.isdigit() and 2 <= len(digits) <= 3:
            return int(digits[:-1]), int(digits[-1])
    m = _CC.fullmatch(s)
    if not m:
        raise ValueError(f"{cc!r} is not a compute capability such as '8.9'")
    return int(m.group(1)), int(m.group(2))


def format_cc(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def normalize_cc(cc: str | Sequence[int]) -> str:
    """``"sm_89"`` / ``" 8.9 "`` -> ``"8.9"`` (ValueError when it is not a compute capability)."""
    return format_cc(parse_cc(cc))


def version_tuple(v: str | None) -> tuple[int, ...]:
    """``"1.7.1.116"`` -> ``(1, 7, 1, 116)``; non-numeric parts count as 0; None/"" -> ()."""
    if not v:
        return ()
    out = []
    for part in str(v).split("."):
        digits = re.match(r"\d+", part)
        out.append(int(digits.group()) if digits else 0)
    return tuple(out)
