"""The installer's trust policy: signature by a pinned key, expiry, maximum age, rollback.

Every installer checks, before any artifact is used:

1. **Signature** by a pinned key (``trusted_keys=`` / ``--trusted-key FILE`` /
   ``RTXPACK_TRUSTED_KEYS``) over the canonical manifest (see :mod:`rtxpack.core.signing`),
   checked on the raw bytes, size-bounded, before the manifest is parsed and validated
   (:func:`open_manifest`). With keys pinned, anything else is refused. With none pinned the
   repository is used with a warning (once per repository) unless ``require_signed`` is set.
   ``trusted_keys=[]`` given explicitly trusts no key: every manifest is refused.
2. **Expiry**: a manifest past its ``expires`` is refused (a frozen mirror cannot serve old
   releases forever); with ``max_manifest_age_days`` (``--max-manifest-age``,
   ``RTXPACK_MAX_MANIFEST_AGE_DAYS``) one signed longer ago than that is refused too.
3. **Rollback**: the newest version accepted per *publisher identity* (the signing keyid, the
   manifest's ``name`` and its ``project.name``) is remembered in the store's ``state/trust``
   (atomically, under a lock); an older version is refused whatever URL, host alias, directory
   or bundle file it arrives through, and so is the same version with different content. Only
   *verified* manifests are remembered: an unsigned manifest's version is whatever the network
   says, so recording it would let anyone pin a huge version and block real updates. Checking
   reads the state without a lock; only recording a newer version writes (on a read-only store
   the version is not recorded, with a warning; protection stays at what was recorded).

Artifacts themselves are covered by the manifest: every download is checked for length and
sha256 by :mod:`rtxpack.installer.fetch` / :mod:`rtxpack.installer.store` before it becomes a store entry.

Options (:class:`TrustPolicy`, the CLI's ``--trusted-key`` / ``--require-signed`` /
``--max-manifest-age``): keys given explicitly replace ``RTXPACK_TRUSTED_KEYS``;
``RTXPACK_REQUIRE_SIGNED=1`` or ``require_signed=True`` either one requires a signature.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..core import config
from ..core.errors import ConfigError, SignatureError, StoreError
from ..core.manifest import Manifest, parse_time
from ..core.signing import check_signature, check_signature_raw, load_trusted_keys
from .store import Store

log = logging.getLogger("rtxpack.trust")

_PIN_FIX = ("pin the publisher's public key: --trusted-key rtxpack.pub, trusted_keys=[...] "
            "or RTXPACK_TRUSTED_KEYS=path/to/rtxpack.pub")
_warned: set[str] = set()
#: a rollback state file is a few hundred bytes
_MAX_STATE_BYTES = 64 << 10
#: a manifest signed this far in the future is still "fresh" (clock skew between publisher and PC)
_SKEW = timedelta(minutes=10)


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
    keyids: tuple[str, ...] = ()  # every trusted key whose signature verified


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


def check_max_age(days: Any) -> float | None:
    """A maximum manifest age in days: None, or a finite number > 0 (ConfigError otherwise)."""
    if days is None:
        return None
    try:
        value = float(days)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 36500:
        raise ConfigError(f"maximum manifest age {days!r} is not a number of days > 0 and <= 36500",
                          fix="give a number of days such as 30", option="max_manifest_age_days", value=str(days))
    return value


def _check_age(manifest: Manifest, *, repo: str, now: datetime, max_age_days: float | None) -> None:
    if max_age_days is None:
        return
    try:
        created = parse_time(manifest.created) if manifest.created else None
    except ValueError:
        created = None
    if created is None:
        raise SignatureError(f"{repo}: the manifest carries no signing time, but a maximum age of {max_age_days:g} "
                             "days is required", fix="the publisher must re-sign with `rtxpack sign` (it records the "
                             "signing time)", repo=repo, version=manifest.version, reason="too-old")
    age = now - created
    if age > timedelta(days=max_age_days):
        raise SignatureError(
            f"{repo}: the manifest (version {manifest.version}) was signed {age.days} days ago ({manifest.created}), "
            f"older than the {max_age_days:g} days allowed; refusing it (a stale or frozen mirror)",
            fix="the publisher must re-sign (`rtxpack sign`), or allow an older manifest "
                "(--max-manifest-age / RTXPACK_MAX_MANIFEST_AGE_DAYS)",
            repo=repo, version=manifest.version, reason="too-old")


# ---- rollback state, keyed by publisher identity -----------------------------------------------------
def identity(keyid: str, manifest_or_name: Manifest | str, project_name: str | None = None) -> dict[str, Any]:
    """Who published a manifest: the signing keyid, the manifest's name and its project's name."""
    if isinstance(manifest_or_name, Manifest):
        project = manifest_or_name.project
        name = manifest_or_name.name
        project_name = project.get("name") if isinstance(project, Mapping) else None
    else:
        name = manifest_or_name
    return {"keyid": keyid, "name": name, "project": None if project_name is None else str(project_name)}


def _state_name(ident: Mapping[str, Any]) -> str:
    key = json.dumps([ident["keyid"], ident["name"], ident["project"]], separators=(",", ":"))
    return f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def accepted_version(keyid: str, name: str = "rtxpack-repository", project_name: str | None = None, *,
                     store: Any = None) -> int | None:
    """The newest manifest version accepted (verified) on this machine for the publisher identity
    (signing ``keyid``, manifest ``name``, project name), if any."""
    store = store if store is not None else Store()
    folder = store.find_state_dir("trust")
    data = _read_state(None if folder is None else folder / _state_name(identity(keyid, name, project_name)), store)
    v = data.get("version")
    return v if isinstance(v, int) else None


def _read_state(path: Path | None, store: Any) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        os.lstat(path)
    except FileNotFoundError:
        return {}
    except OSError:
        pass
    raw = store.read_state(path, _MAX_STATE_BYTES)
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        # a damaged state file must not disable rollback protection silently
        raise SignatureError(f"rollback state {path} is unreadable or corrupt",
                             fix=f"delete {path} to trust the repository's current version again",
                             path=str(path))
    return data


def _check_rollback(manifest: Manifest, state: Mapping[str, Any], *, repo: str, digest: str, path: Path | None) -> bool:
    """Refuse an older version, or the same version with other content; True when ``state`` must be updated."""
    seen = state.get("version")
    if not isinstance(seen, int):
        return True
    if manifest.version < seen:
        raise SignatureError(
            f"{repo}: manifest version {manifest.version} is older than version {seen} already accepted "
            f"on this machine from the same publisher (key {state.get('keyid')}, {state.get('name')!r}); "
            "refusing a rollback",
            fix="the server or mirror serves an old release; publish a newer one (`rtxpack sign` bumps "
                f"the version), or delete {path} if the downgrade is intended",
            repo=repo, version=manifest.version, accepted_version=seen, reason="rollback")
    if manifest.version == seen and state.get("digest") not in (None, digest):
        raise SignatureError(
            f"{repo}: manifest version {seen} was already accepted with different content; refusing it",
            fix="publish changes under a new version (`rtxpack sign` without --version bumps it)",
            repo=repo, version=manifest.version, accepted_version=seen, reason="same-version-changed")
    return manifest.version > seen


def _check_and_record_rollback(manifest: Manifest, *, repo: str, keyids: Iterable[str], store: Any, record: bool,
                               now: datetime) -> None:
    digest = hashlib.sha256(manifest.canonical_bytes()).hexdigest()
    folder = store.find_state_dir("trust")
    todo = []
    for keyid in keyids:             # every verifying key: a co-signed release is pinned under each signer
        ident = identity(keyid, manifest)
        path = None if folder is None else folder / _state_name(ident)
        if _check_rollback(manifest, _read_state(path, store), repo=repo, digest=digest, path=path):
            todo.append(ident)
    if not (record and todo):
        return                       # nothing new: no lock, no write (a read-only store works)
    try:
        folder = store.state_dir("trust")
        for ident in todo:
            path = folder / _state_name(ident)
            with store.state_lock(path, "the rollback state"):
                if not _check_rollback(manifest, _read_state(path, store), repo=repo, digest=digest, path=path):
                    continue         # another process recorded it meanwhile
                state = {**ident, "repo": repo, "version": manifest.version, "digest": digest,
                         "expires": manifest.expires, "accepted": now.replace(microsecond=0).isoformat()}
                store.write_state(path, json.dumps(state, sort_keys=True).encode(), "the rollback state")
    except StoreError as e:
        if store.writable():
            raise
        msg = (f"rtxpack: could not record version {manifest.version} of {repo} as accepted ({e.message}); "
               "the store is read-only, rollback protection stays at the versions recorded before")
        log.warning(msg)
        warnings.warn(msg, ReadOnlyStoreWarning, stacklevel=3)


class ReadOnlyStoreWarning(UserWarning):
    """Something optional could not be written because the store is read-only."""


def verify_manifest(manifest: Manifest, *, trusted_keys: Iterable[Any] | None, require_signed: bool, repo: str,
                    store: Any = None, now: datetime | None = None, record: bool = True,
                    max_age_days: float | None = None, keyids: Iterable[str] | None = None) -> Verification:
    """Signature, expiry, age and rollback checks for ``manifest`` read from ``repo``.

    ``trusted_keys`` are paths / key bytes / key objects (None: unsigned use, with a warning,
    unless ``require_signed``; an explicit empty list trusts no key). The rollback state lives in
    ``store``'s ``state/trust`` (default: the store of ``RTXPACK_CACHE_DIR``); ``record=False``
    checks without remembering the version; ``keyids``: the signature was already checked on the
    raw bytes (:func:`open_manifest`) by these keys. Raises :class:`SignatureError`.
    """
    now = now or datetime.now(timezone.utc)
    store = store if store is not None else Store()
    given = None if trusted_keys is None else list(trusted_keys)
    keys = load_trusted_keys(given)
    if given is not None and not given:
        raise SignatureError(f"{repo}: trusted_keys=[] trusts no key, so no manifest can be accepted",
                             fix="pass the publisher's rtxpack.pub in trusted_keys, or leave trusted_keys out "
                                 "(None) for unsigned use", repo=repo, reason="no-trusted-key")
    if not keys:
        if require_signed:
            seen = [str(s.get("keyid")) for s in manifest.signatures if isinstance(s, dict)]
            raise SignatureError(
                f"{repo}: signed manifests are required (require_signed / RTXPACK_REQUIRE_SIGNED=1) but no "
                f"trusted key is configured (keys seen in the manifest: {', '.join(seen) or 'none'})",
                fix=_PIN_FIX, repo=repo, keyids_seen=seen, reason="no-trusted-key")
        _check_expiry(manifest, repo=repo, now=now)
        _check_age(manifest, repo=repo, now=now, max_age_days=max_age_days)
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
    good = list(keyids) if keyids is not None else [check_signature(manifest, keys, repo=repo)]
    _check_expiry(manifest, repo=repo, now=now)
    _check_age(manifest, repo=repo, now=now, max_age_days=max_age_days)
    _check_and_record_rollback(manifest, repo=repo, keyids=good, store=store, record=record, now=now)
    return Verification(repo, True, good[0], manifest.version, manifest.expires, tuple(good))


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys to trust, whether a signature is required, how old a manifest may be (None: from
    the environment). ``trusted_keys=()`` (given, empty) trusts no key."""

    trusted_keys: tuple[Any, ...] | None = None
    require_signed: bool | None = None
    max_age_days: float | None = None

    def keys(self) -> list[Any] | None:
        """The keys to trust: the given ones (possibly none), else RTXPACK_TRUSTED_KEYS (None when unset)."""
        if self.trusted_keys is not None:
            return list(self.trusted_keys)
        env = config.trusted_keys()
        return list(env) if env else None

    def required(self) -> bool:
        return bool(self.require_signed) or config.require_signed()

    def max_age(self) -> float | None:
        return check_max_age(self.max_age_days) if self.max_age_days is not None else config.max_manifest_age_days()


def open_manifest(raw: bytes, repo: str, policy: TrustPolicy, *, store: Any, source: str,
                  now: datetime | None = None) -> tuple[Manifest, Verification]:
    """Verify and parse a repository's manifest bytes: with keys pinned, the signature is checked on
    the raw bytes (size-bounded, before validation and parsing), then the parsed manifest must be
    exactly what was signed; then expiry, age and rollback (:func:`verify_manifest`)."""
    keys = policy.keys()
    if keys is not None and not keys:
        raise SignatureError(f"{repo}: trusted_keys=[] trusts no key, so no manifest can be accepted",
                             fix="pass the publisher's rtxpack.pub in trusted_keys, or leave trusted_keys out "
                                 "(None) for unsigned use", repo=repo, reason="no-trusted-key")
    if keys:
        doc, body, good = check_signature_raw(raw, load_trusted_keys(keys), repo=repo)
        manifest = Manifest.from_dict(doc, source=source)
        if manifest.canonical_bytes() != body:
            raise SignatureError(f"{repo}: the signed manifest is not in rtxpack's canonical form (fields that parse "
                                 "differently from what was signed); refusing it",
                                 fix="re-sign the repository with `rtxpack sign`", repo=repo, reason="bad-signature")
        return manifest, verify_manifest(manifest, trusted_keys=keys, require_signed=policy.required(), repo=repo,
                                         store=store, now=now, max_age_days=policy.max_age(), keyids=good)
    manifest = Manifest.from_json(raw, source=source)
    return manifest, verify_manifest(manifest, trusted_keys=keys, require_signed=policy.required(), repo=repo,
                                     store=store, now=now, max_age_days=policy.max_age())
