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

Every error's message says what went wrong *and* how to fix it; structured details are kept
as attributes so callers (and ``--json``) can use them without parsing text.
"""
from __future__ import annotations

from typing import Any


class RtxpackError(Exception):
    """Root of every error rtxpack raises on purpose."""

    #: one-line hint telling the user how to fix the problem (shown by the CLI)
    fix: str | None = None

    def __init__(self, message: str, *, fix: str | None = None, **details: Any) -> None:
        super().__init__(message)
        if fix is not None:
            self.fix = fix
        self.details: dict[str, Any] = details
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        msg = super().__str__()
        if self.fix and self.fix not in msg:
            return f"{msg} (fix: {self.fix})"
        return msg

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": type(self).__name__, "message": super().__str__()}
        if self.fix:
            out["fix"] = self.fix
        for key, value in self.details.items():
            out[key] = value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)
        return out


class ConfigError(RtxpackError, ValueError):
    """A configuration file, environment variable or argument is invalid."""


class ManifestError(RtxpackError, ValueError):
    """A manifest (or one of its entries) is malformed or of an unknown version."""


class SignatureError(ManifestError):
    """A manifest's signature, expiry or version cannot be trusted."""


class DeviceError(RtxpackError):
    """GPU detection or an ``RTXPACK_DEVICE`` override is unusable."""


class ResolveError(RtxpackError, LookupError):
    """No artifact in the repository fits this machine (and no fallback applies)."""


class StoreError(RtxpackError, OSError):
    """The local artifact store cannot be read or written."""


class FetchError(RtxpackError, OSError):
    """An artifact could not be fetched from any of its sources."""


class OfflineError(FetchError):
    """Offline mode is on and the artifact is not in the local store."""


class ChecksumMismatch(FetchError, ValueError):
    """Bytes received do not match the declared size or sha256; nothing was installed."""


class BundleError(RtxpackError, ValueError):
    """An offline bundle is malformed or contains unsafe entries."""


class BackendError(RtxpackError):
    """A backend failed to build, load or run a plan."""


class BackendNotInstalled(BackendError, ImportError):
    """The Python package a backend needs is not installed."""


class UnsupportedModel(BackendError, ValueError):
    """The model uses operators or shapes the backend cannot handle."""


class RefitError(BackendError, ValueError):
    """Weights given for refit do not match the ones the stripped plan was built from."""


class BuildError(RtxpackError):
    """A build-farm cell failed."""
