"""How every command prints: human text or ``--json`` (one helper), errors as one line plus the fix,
warnings as one line, and the checks of path arguments every command shares.

An error is printed the same way wherever it comes from (a library :class:`RtxpackError`, an
argument the parser refused, an ``OSError`` naming a path): ``rtxpack: error: ...`` and
``  fix: ...`` on stderr, or one JSON object on stdout under ``--json``; the exit code is 1.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from ..core.errors import ConfigError, RtxpackError

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
        for k in args.trusted_key:
            existing_file(k, "--trusted-key", what="public key file (rtxpack.pub)")
        out["trusted_keys"] = list(args.trusted_key)
    if getattr(args, "require_signed", None):
        out["require_signed"] = True
    if getattr(args, "max_manifest_age", None) is not None:
        out["max_manifest_age_days"] = args.max_manifest_age
    return out


# ---- errors ------------------------------------------------------------------------------------
def print_error(err: RtxpackError, as_json: bool) -> None:
    """The one way an error reaches the user (JSON object on stdout, or two lines on stderr)."""
    if as_json:
        print(json.dumps(err.to_dict(), indent=2, default=str))
        return
    print(f"rtxpack: error: {safe_text(_one_line(err.message))}", file=sys.stderr)
    if err.fix:
        print(f"  fix: {safe_text(_one_line(err.fix))}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def os_error(e: OSError) -> RtxpackError:
    """An OSError that escaped the library (a path argument the command could not use) as one line
    that names the path and the cause."""
    path = e.filename if e.filename is not None else None
    where = f"{path}: " if path is not None else ""
    if isinstance(e, IsADirectoryError):
        msg, fix = f"{where}is a directory, a file is expected here", "pass the path of a file"
    elif isinstance(e, NotADirectoryError):
        msg, fix = f"{where}a file is in the way where a directory is expected", "pass a directory (or a new path)"
    elif isinstance(e, FileExistsError):
        msg, fix = f"{where}already exists", "choose another path, or remove it first"
    elif isinstance(e, FileNotFoundError):
        msg, fix = f"{where}no such file or directory", "check the path"
    elif isinstance(e, PermissionError):
        msg, fix = f"{where}permission denied", "check the permissions, or choose a path you can write"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg, fix = f"{where}no space left on the device", "free disk space, or write to another disk"
    elif e.errno == errno.EROFS:
        msg, fix = f"{where}the file system is read-only", "choose a writable path"
    else:
        msg, fix = f"{where}{e.strerror or e}", "check the path and the disk"
    return ConfigError(msg, fix=fix, path=str(path) if path is not None else None)


def unexpected(e: BaseException) -> RtxpackError:
    """Anything else that escaped: a bug in rtxpack, said in one line (the traceback with RTXPACK_DEBUG=1)."""
    err = RtxpackError(f"unexpected {type(e).__name__}: {_one_line(str(e)) or 'no message'} (a bug in rtxpack)",
                       fix="run it again with RTXPACK_DEBUG=1 and report the traceback")
    return err


def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                   file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the CLI: one formatted line (plus the fix), no source line."""
    text = safe_text(_one_line(str(message)))
    repo = getattr(message, "repo", None)
    if repo and category.__name__ == "UnsignedRepositoryWarning":
        text = (f"{repo} is not signed: using it WITHOUT signature verification (pin the publisher's key with "
                "--trusted-key rtxpack.pub or RTXPACK_TRUSTED_KEYS; --require-signed refuses unsigned repositories)")
    elif text.startswith("rtxpack: "):
        text = text[len("rtxpack: "):]
    out = file if file is not None else sys.stderr
    try:
        print(f"rtxpack: warning: {text}", file=out)
    except (OSError, ValueError):  # stderr closed: a warning is not worth a crash
        pass


# ---- path arguments ----------------------------------------------------------------------------
def existing_file(value: str | os.PathLike[str], option: str, *, what: str = "file") -> Path:
    """``value`` must be an existing regular file (a directory or a missing path is one clear error)."""
    p = Path(value).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {value}: is a directory, a {what} is expected",
                          fix=f"pass the {what} itself, not the folder that holds it", path=str(p), option=option)
    if not p.exists():
        raise ConfigError(f"{option} {value}: no such {what}", fix="check the path", path=str(p), option=option)
    return p


def existing_dir(value: str | os.PathLike[str], option: str, *, what: str = "directory") -> Path:
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {value}: is a file, a {what} is expected",
                          fix=f"pass the {what}", path=str(p), option=option)
    if not p.exists():
        raise ConfigError(f"{option} {value}: no such {what}", fix="check the path", path=str(p), option=option)
    return p


def new_file(value: str | os.PathLike[str], option: str, *, force: bool, what: str = "file") -> Path:
    """An output file: never a directory; an existing file only with ``--force``; the parent must be
    a directory (created when missing)."""
    p = Path(value).expanduser()
    if p.is_dir():
        raise ConfigError(f"{option} {value}: is a directory; the {what} is written to a file path",
                          fix=f"pass a file name, e.g. {Path(value) / 'engines.tar.gz'}", path=str(p), option=option)
    if p.exists() and not force:
        raise ConfigError(f"{option} {value}: already exists; not overwriting it",
                          fix="choose another path, or pass --force to replace it", path=str(p), option=option)
    parent = _first_existing(p.parent)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {value}: {parent} is a file, not a directory",
                          fix="choose a path inside a directory", path=str(p), option=option)
    return p


def output_dir(value: str | os.PathLike[str], option: str, *, ours: Callable[[Path], bool], force: bool,
               what: str) -> Path:
    """A directory a command writes into: new, empty, or already ``what`` (``ours``); any other
    non-empty directory only with ``--force`` (it is the user's)."""
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {value}: is a file, {what} directory is expected",
                          fix="pass a directory (a new one is created)", path=str(p), option=option)
    parent = _first_existing(p)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"{option} {value}: {parent} is a file, not a directory",
                          fix="choose a path inside a directory", path=str(p), option=option)
    if p.is_dir() and not force and not ours(p) and any(p.iterdir()):
        raise ConfigError(f"{option} {value}: is a non-empty directory that is not {what}; not writing into it",
                          fix="pass a new or empty directory, or --force to write into it anyway", path=str(p),
                          option=option)
    return p


def _is_repository(p: Path) -> bool:
    """A directory rtxpack wrote: a manifest, or only what an interrupted first build leaves."""
    from ..core.manifest import MANIFEST_NAME
    from ..farm.repo import LOCK_NAME

    return (p / MANIFEST_NAME).is_file() or {c.name for c in p.iterdir()} <= {LOCK_NAME, ".tmp", "blobs"}


def repo_output(args: argparse.Namespace) -> Path:
    """``--repo`` of a command that writes a repository (new, empty, or already one; else --force)."""
    return output_dir(args.repo, "--repo", ours=_is_repository, force=args.force, what="an rtxpack repository")


def repo_input(value: str, option: str = "--repo") -> Path:
    """A repository directory a command reads (it must have a manifest.json)."""
    from ..core.manifest import MANIFEST_NAME
    from ..core.errors import ManifestError

    p = existing_dir(value, option, what="repository directory")
    if not (p / MANIFEST_NAME).is_file():
        raise ManifestError(f"{option} {value}: not an rtxpack repository (no {MANIFEST_NAME})",
                            fix="pass the directory `rtxpack build --repo` or `rtxpack merge --repo` wrote",
                            repo=str(p))
    return p


def _first_existing(p: Path) -> Path | None:
    for q in (p, *p.parents):
        if os.path.lexists(q):
            return q
    return None


def compute_capabilities(text: str | None, option: str = "--cc") -> list[str] | None:
    """``"8.9,12.0"`` -> ``["8.9", "12.0"]``; a malformed entry is one clear error."""
    if text is None:
        return None
    from ..core.versions import normalize_cc

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(normalize_cc(part))
        except ValueError:
            raise ConfigError(f"{option} {text}: {part!r} is not a compute capability",
                              fix=f"write them like {option} 8.9,12.0 (major.minor, comma-separated)",
                              value=part, option=option) from None
    if not out:
        raise ConfigError(f"{option} {text!r} names no compute capability", fix=f"write them like {option} 8.9,12.0",
                          value=text, option=option)
    return out
