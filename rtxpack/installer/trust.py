"""The installer's trust policy: signature by a pinned key, expiry, rollback.

Every installer checks, before any artifact is used:

1. **Signature** by a pinned key (``trusted_keys=`` / ``--trusted-key FILE`` /
   ``RTXPACK_TRUSTED_KEYS``) over :meth:`Manifest.canonical_bytes` (see :mod:`rtxpack.core.signing`).
   With keys pinned, anything else is refused. With none pinned the repository is used with a
   warning (once per repository) unless ``require_signed`` is set.
2. **Expiry**: a manifest past its ``expires`` is refused (a frozen mirror cannot serve old
   releases forever).
3. **Rollback**: the newest version accepted per repository is remembered in the store's
   ``state/trust`` (atomically, under a lock); an older version is refused, and so is the same
   version with different content. Only *verified* manifests are remembered: an unsigned
   manifest's version is whatever the network says, so recording it would let anyone pin a huge
   version and block real updates.

Artifacts themselves are covered by the manifest: every download is checked for length and
sha256 by :mod:`rtxpack.installer.fetch` / :mod:`rtxpack.installer.store` before it becomes a store entry.

Options (:class:`TrustPolicy`, the CLI's ``--trusted-key`` / ``--require-signed``): keys given
explicitly replace ``RTXPACK_TRUSTED_KEYS``; ``RTXPACK_REQUIRE_SIGNED=1`` or
``require_signed=True`` either one requires a signature.
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import filelock

from ..core import config
from ..core.errors import SignatureError
from ..core.fsutil import atomic_write
from ..core.manifest import Manifest, parse_time
from ..core.signing import check_signature, load_trusted_keys
from .store import Store

log = logging.getLogger("rtxpack.trust")

_PIN_FIX = ("pin the publisher's public key: --trusted-key rtxpack.pub, trusted_keys=[...] "
            "or RTXPACK_TRUSTED_KEYS=path/to/rtxpack.pub")
_warned: set[str] = set()


class UnsignedRepositoryWarning(UserWarning):
    """A repository was used without signature verification (no trusted key configured).

    ``repo`` and ``fix`` let a front end (the CLI) print it as one line plus the fix."""

    def __init__(self, message: str, *, repo: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.repo, self.fix = repo, fix


# ---- verification --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """What :func:`verify_manifest` established."""

    repo: str
    signed: bool                 # verified against a trusted key
    keyid: str | None
    version: int
    expires: str | None


def _check_expiry(manifest: Manifest, *, repo: str, now: datetime) -> None:
    if not manifest.expires:
        return
    try:
        expires = parse_time(manifest.expires)
    except ValueError as e:
        raise SignatureError(f"{repo}: expires {manifest.expires!r} is not an ISO 8601 time",
                             fix="re-sign with `rtxpack sign --expires-in DAYS`", repo=repo) from e
    if now >= expires:
        raise SignatureError(
            f"{repo}: the manifest (version {manifest.version}) expired at {manifest.expires}; refusing it "
            "(a stale or frozen mirror)",
            fix="the publisher must re-sign: `rtxpack sign --repo DIR --key rtxpack.key --expires-in DAYS`; "
                "check that this machine's clock is right",
            repo=repo, expires=manifest.expires, version=manifest.version, reason="expired")


def _state_path(repo: str, store: Any) -> Path:
    return store.state_dir("trust") / f"{hashlib.sha256(repo.encode()).hexdigest()[:32]}.json"


def accepted_version(repo: str, *, store: Any = None) -> int | None:
    """The newest manifest version accepted (verified) for ``repo`` on this machine, if any."""
    data = _read_state(_state_path(repo, store if store is not None else Store()))
    v = data.get("version")
    return v if isinstance(v, int) else None


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        # a damaged state file must not disable rollback protection silently
        raise SignatureError(f"rollback state {path} is unreadable or corrupt",
                             fix=f"delete {path} to trust the repository's current version again",
                             path=str(path)) from None
    return data if isinstance(data, dict) else {}


def _check_and_record_rollback(manifest: Manifest, *, repo: str, keyid: str, store: Any, record: bool,
                               now: datetime) -> None:
    path = _state_path(repo, store)
    digest = hashlib.sha256(manifest.canonical_bytes()).hexdigest()
    with filelock.FileLock(str(path) + ".lock"):
        state = _read_state(path)
        seen = state.get("version")
        if isinstance(seen, int):
            if manifest.version < seen:
                raise SignatureError(
                    f"{repo}: manifest version {manifest.version} is older than version {seen} already accepted "
                    "on this machine; refusing a rollback",
                    fix="the server or mirror serves an old release; publish a newer one (`rtxpack sign` bumps "
                        f"the version), or delete {path} if the downgrade is intended",
                    repo=repo, version=manifest.version, accepted_version=seen, reason="rollback")
            if manifest.version == seen and state.get("digest") not in (None, digest):
                raise SignatureError(
                    f"{repo}: manifest version {seen} was already accepted with different content; refusing it",
                    fix="publish changes under a new version (`rtxpack sign` without --version bumps it)",
                    repo=repo, version=manifest.version, accepted_version=seen, reason="same-version-changed")
            if manifest.version == seen:
                return
        if not record:
            return
        state = {"repo": repo, "version": manifest.version, "digest": digest, "keyid": keyid,
                 "expires": manifest.expires,
                 "accepted": now.replace(microsecond=0).isoformat()}
        atomic_write(path, json.dumps(state, sort_keys=True).encode(), mode=0o644)


def verify_manifest(manifest: Manifest, *, trusted_keys: Iterable[Any] | None, require_signed: bool, repo: str,
                    store: Any = None, now: datetime | None = None, record: bool = True) -> Verification:
    """Signature, expiry and rollback checks for ``manifest`` read from ``repo``.

    ``trusted_keys`` are paths / key bytes / key objects (none: unsigned use, with a warning,
    unless ``require_signed``). The rollback state lives in ``store``'s ``state/trust`` (default: the
    store of ``RTXPACK_CACHE_DIR``);
    ``record=False`` checks without remembering the version. Raises :class:`SignatureError`.
    """
    now = now or datetime.now(timezone.utc)
    store = store if store is not None else Store()
    keys = load_trusted_keys(trusted_keys)
    if not keys:
        if require_signed:
            seen = [str(s.get("keyid")) for s in manifest.signatures if isinstance(s, dict)]
            raise SignatureError(
                f"{repo}: signed manifests are required (require_signed / RTXPACK_REQUIRE_SIGNED=1) but no "
                f"trusted key is configured (keys seen in the manifest: {', '.join(seen) or 'none'})",
                fix=_PIN_FIX, repo=repo, keyids_seen=seen, reason="no-trusted-key")
        _check_expiry(manifest, repo=repo, now=now)
        if repo not in _warned:
            _warned.add(repo)
            msg = (f"rtxpack: using {repo} WITHOUT signature verification: anyone who can change what it serves "
                   f"can change what is installed. To verify it, {_PIN_FIX}; "
                   "require_signed=True / --require-signed / RTXPACK_REQUIRE_SIGNED=1 refuses unsigned use")
            if log.hasHandlers():  # unconfigured logging would print it a second time (logging.lastResort)
                log.warning(msg)
            warnings.warn(UnsignedRepositoryWarning(
                msg, repo=repo, fix=f"{_PIN_FIX}; --require-signed (RTXPACK_REQUIRE_SIGNED=1) refuses unsigned use"),
                stacklevel=2)
        return Verification(repo, False, None, manifest.version, manifest.expires)
    keyid = check_signature(manifest, keys, repo=repo)
    _check_expiry(manifest, repo=repo, now=now)
    _check_and_record_rollback(manifest, repo=repo, keyid=keyid, store=store, record=record, now=now)
    return Verification(repo, True, keyid, manifest.version, manifest.expires)


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys to trust and whether a signature is required (None: from the environment)."""

    trusted_keys: tuple[Any, ...] | None = None
    require_signed: bool | None = None

    def keys(self) -> list[Any]:
        keys = list(self.trusted_keys) if self.trusted_keys else []
        return keys or list(config.trusted_keys())

    def required(self) -> bool:
        return bool(self.require_signed) or config.require_signed()


def verify_repository(manifest: Manifest, repo: str, policy: TrustPolicy, *, store: Any,
                      now: datetime | None = None) -> Verification:
    """The check :mod:`rtxpack.installer.repository` runs on every manifest it opens (URL, dir, bundle)."""
    return verify_manifest(manifest, trusted_keys=policy.keys(), require_signed=policy.required(), repo=repo,
                           store=store, now=now)
