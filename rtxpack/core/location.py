"""Where a repository (or one of its files) lives: the one parser for every module that opens one.

A location is an ``http(s)://`` URL, a ``file://`` URL, or a local path; a local path is a
repository directory or an offline bundle file (decided when it is opened, by looking at it).
``Location.parse`` normalizes the spelling (URL without trailing slash, absolute path) and keeps
credentials out of everything that is printed or written: ``display`` and ``key`` never hold a
user name or password.
"""
from __future__ import annotations

import os
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


def is_http(value: "str | os.PathLike[str] | Location") -> bool:
    return Location.parse(value).is_http


def safe_relpath(relpath: str) -> str:
    """A manifest path as a plain relative path inside the repository (ManifestError otherwise)."""
    rel = str(relpath).replace("\\", "/")
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or ":" in parts[0]:
        raise ManifestError(
            f"artifact path {relpath!r} is not a plain relative path inside the repository",
            fix="fix the manifest entry (paths look like blobs/sha256/ab/abcd...)",
            path=str(relpath),
        )
    return rel
