"""The one context the installer pipeline carries: store, trust policy, offline, progress, clock.

Everything the installer writes lives in ``ctx.store`` (blobs, the manifest copies, the rollback
state, the digest cache, runtime caches, JIT plans), so a custom ``store=`` or cache directory
reaches every file; tests inject ``clock`` instead of patching time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core import config
from ..core.errors import ConfigError
from ..core.digest_cache import DigestCache
from .store import Store
from .trust import TrustPolicy, check_max_age


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class InstallContext:
    store: Store
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    offline: bool = False
    progress: bool | None = None          # None: a bar only when stderr is a terminal
    clock: Callable[[], datetime] = _utcnow
    session: Any = None                   # a requests.Session to reuse, or None (one per fetch)
    _digests: DigestCache | None = field(default=None, repr=False)

    @classmethod
    def create(cls, *, store: Store | str | os.PathLike[str] | None = None,
               trusted_keys: Sequence[Any] | None = None, require_signed: bool | None = None,
               offline: bool | None = None, progress: bool | None = None,
               clock: Callable[[], datetime] | None = None, session: Any = None,
               max_manifest_age_days: float | None = None) -> "InstallContext":
        """A context from explicit arguments, the environment filling in what is not given.
        ``trusted_keys=[]`` (given, empty) trusts no key: every manifest is refused."""
        if not isinstance(store, Store):
            store = Store(store)
        if isinstance(trusted_keys, (str, bytes, bytearray, os.PathLike)):
            trusted_keys = [trusted_keys]
        return cls(store=store,
                   trust=TrustPolicy(tuple(trusted_keys) if trusted_keys is not None else None, require_signed,
                                     check_max_age(max_manifest_age_days)),
                   offline=config.offline() if offline is None else bool(offline), progress=progress,
                   clock=clock or _utcnow, session=session)

    def now(self) -> datetime:
        return self.clock()

    @property
    def digests(self) -> DigestCache:
        """Model / weights digests of local ONNX files, kept in this store (read without creating
        anything; saved when the store is writable)."""
        if self._digests is None:
            self._digests = DigestCache(self.store.root / "state" / "digests.json",
                                        find=lambda: self.store.find_state_path("digests.json"),
                                        make=lambda: self.store.state_path("digests.json"))
        return self._digests

    def weights_digest(self, onnx: str | os.PathLike[str]) -> str:
        digest = self.digests.weights(Path(onnx))
        self.digests.save()
        return digest

    def model_digest(self, onnx: str | os.PathLike[str]) -> str:
        digest = self.digests.model(Path(onnx))
        self.digests.save()
        return digest


_OPTIONS = ("store", "trusted_keys", "require_signed", "offline", "progress", "clock", "session",
            "max_manifest_age_days")


def context_from(ctx: InstallContext | None, options: dict[str, Any]) -> InstallContext:
    """``ctx`` itself, or a new context from keyword ``options`` (an unknown name is a ConfigError:
    a typo such as ``trusted_key=`` must not silently turn verification off)."""
    if ctx is not None:
        if options:
            raise ConfigError(f"pass either ctx= or context options, not both ({sorted(options)})",
                              fix="put the options into the InstallContext", option=sorted(options))
        return ctx
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}", fix=f"use {', '.join(_OPTIONS)}", option=unknown)
    return InstallContext.create(**options)
