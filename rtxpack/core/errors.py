"""One exception tree for rtxpack.

    RtxpackError
    ├── ConfigError (ValueError)            bad rtxpack.toml, bad environment variable, bad argument
    ├── ManifestError (ValueError)          malformed / unknown-version manifest or entry
    │   └── SignatureError                  unsigned, untrusted, expired or rolled-back manifest
    ├── DeviceError                         GPU detection / RTXPACK_DEVICE problems
    ├── ResolveError (LookupError)          nothing in the repository fits this machine
    ├── StoreError (OSError)                local store problems (disk full, corrupt entry)
    ├── FetchError (OSError)                network / source problems
    │   ├── OfflineError                    RTXPACK_OFFLINE=1 and the artifact is not local
    │   └── ChecksumMismatch (ValueError)   bytes do not match the declared size / sha256
    ├── BundleError (ValueError)            unsafe or malformed offline bundle
    ├── BackendError                        a backend failed to build / load / run
    │   ├── BackendNotInstalled (ImportError)
    │   ├── UnsupportedModel (ValueError)   operators or shapes a backend cannot handle
    │   └── RefitError (ValueError)         refit weights do not match the stripped plan
    └── BuildError                          a farm cell failed
        └── ClusterError                    Dask missing, scheduler unreachable or lost, no worker fits

Every error's message says what went wrong *and* how to fix it (``fix``). Structured details are
declared per class, as httpx and huggingface_hub do: each class lists the fields it carries in
``FIELDS`` (inherited fields included), so a caller reads ``err.sha256`` knowing it exists, and a
raise that passes an undeclared name is a TypeError caught by the tests. One name per concept:

    path               a local file or directory        url        a remote location (URL)
    repo               a repository, as given/normalized artifact  an artifact (manifest entry) id
    model              a model name                     sha256     an artifact's declared digest
    expected_sha256 / actual_sha256, expected_size / actual_size   a verification that failed
    key                a config-file key                variable   an environment variable
    value              the offending value              option     a command option / API keyword
"""
from __future__ import annotations

from typing import Any, ClassVar


class RtxpackError(Exception):
    """Root of every error rtxpack raises on purpose."""

    #: one-line hint telling the user how to fix the problem (shown by the CLI)
    fix: str | None = None
    #: structured fields this class declares (subclasses add theirs; see the module doc)
    FIELDS: ClassVar[frozenset[str]] = frozenset({"path", "url", "repo", "artifact", "model", "value"})
    _OWN: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        own = cls.__dict__.get("_OWN", ())
        cls.FIELDS = frozenset().union(*(getattr(b, "FIELDS", frozenset()) for b in cls.__mro__[1:]), own)

    def __init__(self, message: str, *, fix: str | None = None, **details: Any) -> None:
        super().__init__(message)
        undeclared = sorted(set(details) - self.FIELDS)
        if undeclared:
            raise TypeError(f"{type(self).__name__} does not declare field(s) {undeclared}; "
                            f"declared: {sorted(self.FIELDS)}")
        if fix is not None:
            self.fix = fix
        self.details: dict[str, Any] = details
        for name in self.FIELDS:
            setattr(self, name, details.get(name))

    def __str__(self) -> str:
        msg = super().__str__()
        if self.fix and self.fix not in msg:
            return f"{msg} (fix: {self.fix})"
        return msg

    @property
    def message(self) -> str:
        """The message without the fix."""
        return Exception.__str__(self)

    def with_details(self, **details: Any) -> "RtxpackError":
        """Add (declared) fields after the fact, e.g. the URL a lower layer did not know."""
        undeclared = sorted(set(details) - self.FIELDS)
        if undeclared:
            raise TypeError(f"{type(self).__name__} does not declare field(s) {undeclared}")
        self.details.update(details)
        for k, v in details.items():
            setattr(self, k, v)
        return self

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.fix:
            out["fix"] = self.fix
        for key, value in self.details.items():
            out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        return out


class ConfigError(RtxpackError, ValueError):
    """A configuration file, environment variable or argument is invalid."""

    _OWN = ("key", "variable", "option", "cell", "compute_capability")


class ManifestError(RtxpackError, ValueError):
    """A manifest (or one of its entries) is malformed or of an unknown version."""

    _OWN = ("schema_version", "json_path", "differing_fields")


class SignatureError(ManifestError):
    """A manifest's signature, expiry or version cannot be trusted."""

    _OWN = ("reason", "version", "accepted_version", "expires", "keyids_seen", "trusted_keyids")


class DeviceError(RtxpackError):
    """GPU detection or an ``RTXPACK_DEVICE`` override is unusable."""

    _OWN = ("variable",)


class ResolveError(RtxpackError, LookupError):
    """No artifact in the repository fits this machine (and no fallback applies)."""

    _OWN = ("gpu", "device", "rejected", "fallbacks", "available")


class StoreError(RtxpackError, OSError):
    """The local artifact store cannot be read or written."""

    _OWN = ("needed_bytes", "free_bytes")


class FetchError(RtxpackError, OSError):
    """An artifact could not be fetched from any of its sources."""

    _OWN = ("sha256", "size", "sources", "errors", "http_status", "max_bytes", "store")


class OfflineError(FetchError):
    """Offline mode is on and the artifact is not in the local store."""


class ChecksumMismatch(FetchError, ValueError):
    """Bytes received do not match the declared size or sha256; nothing was installed."""

    _OWN = ("expected_sha256", "actual_sha256", "expected_size", "actual_size", "member")


class BundleError(RtxpackError, ValueError):
    """An offline bundle is malformed or contains unsafe entries."""

    _OWN = ("member",)


class BackendError(RtxpackError):
    """A backend failed to build, load or run a plan."""

    _OWN = ("backend", "compute_capability", "cuda_error", "diagnostics", "reasons", "format_version", "input",
            "shape")


class BackendNotInstalled(BackendError, ImportError):
    """The Python package a backend needs is not installed."""


class UnsupportedModel(BackendError, ValueError):
    """The model uses operators or shapes the backend cannot handle."""

    _OWN = ("unsupported",)


class RefitError(BackendError, ValueError):
    """Weights given for refit do not match the ones the stripped plan was built from."""

    _OWN = ("weight", "expected_sha256", "actual_sha256")


class BuildError(RtxpackError):
    """A build-farm cell failed."""

    _OWN = ("toolchain", "cell")


class ClusterError(BuildError):
    """A cluster build or warm-up cannot go on: Dask is not installed, the scheduler cannot be reached
    or went away, or no worker is connected."""

    _OWN = ("scheduler",)
