"""Where a repository (or one of its files) lives: the one parser for every module that opens one.

A location is an ``http(s)://`` URL, a ``file://`` URL, or a local path; a local path is a
repository directory or an offline bundle file (decided when it is opened, by looking at it).
``Location.parse`` normalizes the spelling (URL without trailing slash, absolute path) and keeps
credentials out of everything that is printed or written: ``display`` and ``key`` never hold a
user name or password.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError, ManifestError


@dataclass(frozen=True)
class Location:
    kind: str              # "http" | "local"
    spec: str              # the URL as given (without trailing slash; credentials kept: it is used to fetch)
    path: Path | None      # local: the absolute path

    @classmethod
    def parse(cls, value: "str | os.PathLike[str] | Location") -> "Location":
        if isinstance(value, Location):
            return value
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{value!r} is not a repository location",
                              fix="give an http(s) URL, a repository directory or a bundle file", value=repr(value))
        text = os.fspath(value)
        if isinstance(text, bytes):  # pragma: no cover - os.fspath of a bytes path
            text = os.fsdecode(text)
        if "\0" in text:
            raise ConfigError("a repository location contains a NUL character", fix="check --repo", value=repr(text))
        scheme = urlsplit(text).scheme.lower() if isinstance(value, str) else ""
        if scheme in ("http", "https"):
            parts = urlsplit(text)
            if not parts.hostname:
                raise ConfigError(f"{redact(text)} has no host name", fix="give a URL such as https://cdn.example.com/repo",
                                  value=redact(text))
            return cls("http", text.rstrip("/"), None)
        if scheme == "file":
            return cls("local", text, Path(unquote(urlsplit(text).path)).resolve())
        if scheme and len(scheme) > 1 and isinstance(value, str) and "://" in text:
            raise ConfigError(f"{redact(text)}: the {scheme}:// scheme is not supported for repositories",
                              fix="give an http(s) URL, a repository directory or a bundle file", value=redact(text))
        return cls("local", text, Path(text).expanduser().resolve())

    @property
    def is_http(self) -> bool:
        return self.kind == "http"

    @property
    def display(self) -> str:
        """What messages show: the URL without credentials, or the absolute path."""
        return redact(self.spec) if self.is_http else str(self.path)

    @property
    def key(self) -> str:
        """The normalized spelling (credentials removed) used for state keys."""
        if self.is_http:
            p = urlsplit(redact(self.spec))
            return urlunsplit((p.scheme.lower(), p.netloc.lower(), p.path.rstrip("/"), p.query, ""))
        return str(self.path)

    def join(self, relpath: str) -> str:
        """URL (http) or filesystem path (local) of ``relpath`` inside this repository."""
        rel = safe_relpath(relpath)
        if self.is_http:
            return self.spec + "/" + rel
        assert self.path is not None
        return str(self.path.joinpath(*rel.split("/")))


def redact(url: str) -> str:
    """``https://user:secret@host/x`` -> ``https://***@host/x`` (anything else unchanged)."""
    try:
        p = urlsplit(url)
    except ValueError:
        return url
    if p.scheme.lower() in ("http", "https") and ("@" in p.netloc):
        host = p.netloc.rsplit("@", 1)[1]
        return urlunsplit((p.scheme, "***@" + host, p.path, p.query, p.fragment))
    return url


_CREDENTIALS = re.compile(r"(?i)\b(https?://)[^/\s@?#]*@")


def redact_text(text: str) -> str:
    """Every ``http(s)://user:secret@`` inside free text (an exception's message) -> ``http(s)://***@``."""
    return _CREDENTIALS.sub(r"\1***@", text)


def is_http(value: "str | os.PathLike[str] | Location") -> bool:
    return Location.parse(value).is_http


#: Windows device names: a file named so (any case, with or without an extension) is the device
_DEVICES = frozenset({"con", "prn", "aux", "nul", "conin$", "conout$"}
                     | {f"{d}{n}" for d in ("com", "lpt") for n in list("123456789") + ["¹", "²", "³"]})
#: characters Windows refuses in names, plus URL syntax that would change what a URL names
_FORBIDDEN = set('<>:"|?*#%')


def relpath_problem(relpath: object) -> str | None:
    """Why ``relpath`` is not a plain relative path inside a repository, or None when it is.

    Refused: empty, absolute, backslashes, empty / ``.`` / ``..`` segments, control characters,
    percent-encoding (``%2e%2e`` would be decoded by a server), ``?`` and ``#`` (URL syntax),
    ``:`` (drive letters, NTFS alternate data streams), Windows-invalid characters, segments ending
    in a dot or a space (Windows strips them: ``a.`` and ``a`` are one file), and Windows device
    names (``CON``, ``NUL``, ``AUX``, ``PRN``, ``COM1``-``COM9``, ``LPT1``-``LPT9``, with or without
    an extension)."""
    if not isinstance(relpath, str) or not relpath:
        return "is empty"
    if "\\" in relpath:
        return "contains a backslash"
    if relpath.startswith("/") or (len(relpath) > 1 and relpath[1] == ":" and relpath[0].isalpha()):
        return "is absolute"
    if any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 for c in relpath):
        return "contains a control character"
    bad = sorted(set(relpath) & _FORBIDDEN)
    if bad:
        return f"contains {' '.join(repr(c) for c in bad)} (percent-encoding, URL syntax, a drive or stream colon, " \
               "or a character Windows refuses)"
    for seg in relpath.split("/"):
        if seg in ("", ".", ".."):
            return "has an empty, '.' or '..' segment"
        if seg[-1] in ". ":
            return f"has a segment ending in a dot or a space ({seg!r})"
        if seg.split(".", 1)[0].rstrip(" ").lower() in _DEVICES:
            return f"names a Windows device ({seg!r})"
    return None


def safe_relpath(relpath: str) -> str:
    """A manifest path as a plain relative path inside the repository (ManifestError otherwise)."""
    problem = relpath_problem(relpath)
    if problem is not None:
        raise ManifestError(
            f"artifact path {relpath!r} is not a plain relative path inside the repository: it {problem}",
            fix="fix the manifest entry (paths look like blobs/sha256/ab/abcd...)",
            path=str(relpath),
        )
    return relpath
