"""Signed manifests: ed25519 keys, signing, and the installer-side checks.

The release engineer signs; every installer checks, before any artifact is used:

1. **Signature** by a pinned key (``trusted_keys=`` / ``--trusted-key FILE`` /
   ``RTXPACK_TRUSTED_KEYS``) over :meth:`Manifest.canonical_bytes` (the manifest without its
   signatures, canonical JSON). With keys pinned, anything else is refused. With none pinned the
   repository is used with a warning (once per repository) unless ``require_signed`` is set.
2. **Expiry**: a manifest past its ``expires`` is refused (a frozen mirror cannot serve old
   releases forever).
3. **Rollback**: the newest version accepted per repository is remembered in
   ``Store().state_dir("trust")`` (atomically, under a lock); an older version is refused, and so
   is the same version with different content. Only *verified* manifests are remembered: an
   unsigned manifest's version is whatever the network says, so recording it would let anyone
   pin a huge version and block real updates.

Artifacts themselves are covered by the manifest: every download is checked for length and
sha256 by :mod:`rtxpack.fetch` / :mod:`rtxpack.store` before it becomes a store entry.

Options (``open_repository(..., trusted_keys=, require_signed=)``, the CLI's ``--trusted-key`` /
``--require-signed``): keys given explicitly replace ``RTXPACK_TRUSTED_KEYS``;
``RTXPACK_REQUIRE_SIGNED=1`` or ``require_signed=True`` either one requires a signature. An unknown
option name is a ConfigError, so a typo cannot silently turn verification off.

Keys: ``rtxpack.key`` is a PKCS#8 PEM private key (mode 0600); ``rtxpack.pub`` a
SubjectPublicKeyInfo PEM. A keyid is the first 16 hex digits of sha256(raw 32-byte public key).
``cryptography`` is imported lazily (extra ``rtxpack[sign]``): installs of unsigned repositories
do not need it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .fsutil import atomic_write
from . import config
from .errors import ConfigError, ManifestError, SignatureError
from .manifest import MANIFEST_NAME, Manifest, parse_time

if TYPE_CHECKING:  # pragma: no cover
    import argparse

log = logging.getLogger("rtxpack.trust")

ALGORITHM = "ed25519"
PRIVATE_NAME = "rtxpack.key"
PUBLIC_NAME = "rtxpack.pub"
DEFAULT_EXPIRES_DAYS = 180
#: same lock file the farm's repository writer takes (rtxpack.farm.repo.LOCK_NAME)
REPO_LOCK_NAME = ".rtxpack.lock"
_INSTALL_HINT = "pip install 'rtxpack[sign]' (the cryptography package)"
_PIN_FIX = ("pin the publisher's public key: --trusted-key rtxpack.pub, trusted_keys=[...] "
            "or RTXPACK_TRUSTED_KEYS=path/to/rtxpack.pub")

_OPTIONS = frozenset({"trusted_keys", "require_signed"})
_warned: set[str] = set()


class UnsignedRepositoryWarning(UserWarning):
    """A repository was used without signature verification (no trusted key configured)."""


# ---- keys ----------------------------------------------------------------------------------------
def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - cryptography is in the sign and test extras
        raise ConfigError("verifying or creating signatures needs the cryptography package", fix=_INSTALL_HINT) from e
    return ed25519


def _raw_public(pub: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def keyid_of(public_key: Any) -> str:
    """First 16 hex digits of sha256 of the raw 32-byte ed25519 public key (object or bytes)."""
    raw = public_key if isinstance(public_key, (bytes, bytearray)) else _raw_public(public_key)
    return hashlib.sha256(bytes(raw)).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    keyid: str
    key: Any            # cryptography Ed25519PublicKey
    source: str         # file name or "<bytes>" (for messages)


def _parse_public(data: bytes, source: str) -> Any:
    ed25519 = _crypto()
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            from cryptography.hazmat.primitives import serialization

            key = serialization.load_pem_public_key(text)
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ValueError(f"a {type(key).__name__}, not an ed25519 public key")
            return key
        if len(data) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(bytes(data))
        if len(text) == 64:
            return ed25519.Ed25519PublicKey.from_public_bytes(binascii.unhexlify(text))
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        raise ValueError(f"{len(data)} bytes is neither PEM nor a raw/hex/base64 32-byte key")
    except (ValueError, binascii.Error, TypeError) as e:
        raise ConfigError(f"trusted key {source} is not an ed25519 public key ({e})",
                          fix="pass the rtxpack.pub written by `rtxpack keygen` (PEM, or raw/hex/base64 32 bytes)",
                          key=source) from e


def load_public_key(item: Any) -> TrustedKey:
    """A trusted key from a path (str/PathLike), key bytes, or an Ed25519PublicKey object."""
    ed25519 = _crypto()
    if isinstance(item, ed25519.Ed25519PublicKey):
        return TrustedKey(keyid_of(item), item, "<key object>")
    if isinstance(item, (bytes, bytearray)):
        key = _parse_public(bytes(item), "<bytes>")
        return TrustedKey(keyid_of(key), key, "<bytes>")
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read trusted key {path}: {e.strerror or e}",
                              fix="check --trusted-key / RTXPACK_TRUSTED_KEYS (files separated by "
                                  f"{os.pathsep!r})", key=str(path)) from e
        if len(data) > 64 << 10:
            raise ConfigError(f"trusted key {path} is {len(data)} bytes: not a public key",
                              fix="pass the rtxpack.pub written by `rtxpack keygen`", key=str(path))
        key = _parse_public(data, str(path))
        return TrustedKey(keyid_of(key), key, str(path))
    raise ConfigError(f"trusted key {item!r} is neither a path nor key bytes", fix="pass paths of rtxpack.pub files")


def load_trusted_keys(items: Iterable[Any] | Any | None) -> list[TrustedKey]:
    if items is None:
        return []
    if isinstance(items, (str, bytes, bytearray, os.PathLike)):
        items = [items]
    keys: dict[str, TrustedKey] = {}
    for item in items:
        k = load_public_key(item)
        keys.setdefault(k.keyid, k)
    return list(keys.values())


def load_private_key(path: str | os.PathLike[str]) -> Any:
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read signing key {p}: {e.strerror or e}",
                          fix="pass the rtxpack.key written by `rtxpack keygen`", key=str(p)) from e
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        elif len(data) == 32:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        else:
            raise ValueError("neither PEM nor a raw 32-byte seed")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p} is not an unencrypted ed25519 private key ({e})",
                          fix="pass the rtxpack.key written by `rtxpack keygen` (not the .pub)", key=str(p)) from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p} holds a {type(key).__name__}, not an ed25519 key",
                          fix="create one with `rtxpack keygen --out DIR`", key=str(p))
    return key


def keygen(out_dir: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``rtxpack.key`` (0600) and ``rtxpack.pub`` into ``out_dir``; return (key, pub, keyid)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    if not force and (key_path.exists() or pub_path.exists()):
        raise ConfigError(f"{key_path} or {pub_path} already exists; not overwriting a signing key",
                          fix="choose another --out directory, or pass --force to replace the key pair",
                          path=str(key_path))
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _atomic_write(key_path, pem, mode=0o600)
    _atomic_write(pub_path, pub, mode=0o644)
    return key_path, pub_path, keyid_of(key.public_key())


def _atomic_write(path: Path, data: bytes, *, mode: int) -> None:
    atomic_write(path, data, mode=mode)


# ---- signing -------------------------------------------------------------------------------------
def sign_manifest(manifest: Manifest, private_key: Any, *, version: int | None = None,
                  expires_in_days: float | None = DEFAULT_EXPIRES_DAYS, now: datetime | None = None) -> Manifest:
    """A copy of ``manifest`` with ``version`` (default: +1), ``expires`` and our signature.

    Signatures of other keys survive only when the signed content is unchanged (same version,
    expiry and artifacts), so several publishers can co-sign one release.
    """
    now = now or datetime.now(timezone.utc)
    new_version = manifest.version + 1 if version is None else int(version)
    if new_version < 1:
        raise ConfigError(f"--version {new_version} must be at least 1", fix="give a positive version")
    if new_version < manifest.version:
        raise ConfigError(f"--version {new_version} is older than the manifest's version {manifest.version}; "
                          "installers that accepted it would refuse this as a rollback",
                          fix=f"use --version {manifest.version + 1} or leave --version out")
    expires = None
    if expires_in_days is not None:
        if expires_in_days <= 0:
            raise ConfigError(f"--expires-in {expires_in_days} must be positive", fix="give a number of days, e.g. 180")
        expires = (now + timedelta(days=expires_in_days)).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    signed = replace(manifest, version=new_version, expires=expires, signatures=())
    body = signed.canonical_bytes()
    kid = keyid_of(private_key.public_key())
    sig = {"keyid": kid, "algorithm": ALGORITHM, "signature": base64.b64encode(private_key.sign(body)).decode()}
    others = ()
    if body == replace(manifest, signatures=()).canonical_bytes():
        others = tuple(s for s in manifest.signatures if isinstance(s, dict) and s.get("keyid") != kid)
    return replace(signed, signatures=others + (sig,))


def sign_repository(repo_dir: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
                    version: int | None = None, expires_in_days: float | None = DEFAULT_EXPIRES_DAYS) -> Manifest:
    """Sign ``repo_dir/manifest.json`` in place (atomically, under the repository lock)."""
    import filelock

    root = Path(repo_dir).expanduser()
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise ManifestError(f"{root} has no {MANIFEST_NAME}", fix="build the repository first (`rtxpack build`)",
                            repo=str(root))
    key = load_private_key(key_path)
    with filelock.FileLock(str(root / REPO_LOCK_NAME)):
        manifest = Manifest.load(mpath)
        signed = sign_manifest(manifest, key, version=version, expires_in_days=expires_in_days)
        # self-check before publishing: what we wrote must verify with our own public key
        reread = Manifest.from_json(signed.to_json(), source=str(mpath))
        _check_signature(reread, [TrustedKey(keyid_of(key.public_key()), key.public_key(), str(key_path))],
                         repo=str(root))
        signed.save(mpath)
    return signed


# ---- verification --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """What :func:`verify_manifest` established."""

    repo: str
    signed: bool                 # verified against a trusted key
    keyid: str | None
    version: int
    expires: str | None


def _check_signature(manifest: Manifest, keys: Sequence[TrustedKey], *, repo: str) -> str:
    """The keyid of a trusted key whose signature verifies, else SignatureError."""
    from cryptography.exceptions import InvalidSignature

    trusted = {k.keyid: k for k in keys}
    body = manifest.canonical_bytes()
    seen: list[str] = []
    bad: list[str] = []
    for sig in manifest.signatures:
        kid = str(sig.get("keyid")) if isinstance(sig, dict) else "?"
        seen.append(kid)
        key = trusted.get(kid)
        if key is None or not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
            continue
        try:
            raw = base64.b64decode(str(sig.get("signature", "")), validate=True)
            key.key.verify(raw, body)
        except (InvalidSignature, ValueError, binascii.Error):
            bad.append(kid)
            continue
        return kid
    pinned = ", ".join(sorted(trusted)) or "none"
    if bad:
        raise SignatureError(
            f"{repo}: the manifest's signature by trusted key {', '.join(bad)} does not verify: it was changed "
            "after signing (or damaged in transit); refusing it",
            fix="re-sign the repository with `rtxpack sign --repo DIR --key rtxpack.key`, or check the mirror",
            repo=repo, keyids_seen=seen, trusted_keyids=sorted(trusted), reason="bad-signature")
    if not seen:
        raise SignatureError(
            f"{repo}: the manifest is not signed, but trusted keys are pinned ({pinned}); refusing it",
            fix="sign it with `rtxpack sign --repo DIR --key rtxpack.key`, or check --repo",
            repo=repo, keyids_seen=seen, trusted_keyids=sorted(trusted), reason="unsigned")
    raise SignatureError(
        f"{repo}: the manifest is signed by key(s) {', '.join(seen)}, none of which is trusted "
        f"(trusted: {pinned}); refusing it",
        fix="pin the publisher's rtxpack.pub (--trusted-key / RTXPACK_TRUSTED_KEYS) whose keyid is one of "
            f"{', '.join(seen)}, or re-sign with a trusted key",
        repo=repo, keyids_seen=seen, trusted_keyids=sorted(trusted), reason="untrusted-key")


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
    from .store import Store

    store = store or Store()
    return store.state_dir("trust") / f"{hashlib.sha256(repo.encode()).hexdigest()[:32]}.json"


def accepted_version(repo: str, *, store: Any = None) -> int | None:
    """The newest manifest version accepted (verified) for ``repo`` on this machine, if any."""
    data = _read_state(_state_path(repo, store))
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


def _check_and_record_rollback(manifest: Manifest, *, repo: str, keyid: str, store: Any, record: bool) -> None:
    import filelock

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
                 "accepted": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(state, sort_keys=True).encode(), mode=0o644)


def verify_manifest(manifest: Manifest, *, trusted_keys: Iterable[Any] | None, require_signed: bool, repo: str,
                    now: datetime | None = None, store: Any = None, record: bool = True) -> Verification:
    """Signature, expiry and rollback checks for ``manifest`` read from ``repo``.

    ``trusted_keys`` are paths / key bytes / key objects (none: unsigned use, with a warning,
    unless ``require_signed``). The rollback state lives in ``store`` (default: ``Store()``);
    ``record=False`` checks without remembering the version. Raises :class:`SignatureError`.
    """
    now = now or datetime.now(timezone.utc)
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
            warnings.warn(msg, UnsignedRepositoryWarning, stacklevel=2)
        return Verification(repo, False, None, manifest.version, manifest.expires)
    keyid = _check_signature(manifest, keys, repo=repo)
    _check_expiry(manifest, repo=repo, now=now)
    _check_and_record_rollback(manifest, repo=repo, keyid=keyid, store=store, record=record)
    return Verification(repo, True, keyid, manifest.version, manifest.expires)


def verify_repository(manifest: Manifest, raw: bytes, repo: str, options: dict[str, Any]) -> None:
    """The verifier :mod:`rtxpack.repository` runs on every manifest it opens (URL, dir, bundle)."""
    unknown = set(options) - _OPTIONS
    if unknown:
        # a typo such as trusted_key= must not silently turn verification off
        raise ConfigError(f"unknown verification option(s) {sorted(unknown)}",
                          fix=f"use {', '.join(sorted(_OPTIONS))}", options=sorted(unknown))
    keys = options.get("trusted_keys")
    if not keys:
        keys = config.trusted_keys()
    require = options.get("require_signed")
    if require is None or require is False:
        require = config.require_signed()
    verify_manifest(manifest, trusted_keys=keys, require_signed=bool(require), repo=repo)


# ---- CLI -----------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    """``rtxpack keygen`` and ``rtxpack sign`` (called by rtxpack.cli)."""
    from .cli import add_json

    p = subparsers.add_parser("keygen", help="create an ed25519 signing key pair (rtxpack.key + rtxpack.pub)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for rtxpack.key (0600) and rtxpack.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_json(p)
    p.set_defaults(func=_cmd_keygen)

    p = subparsers.add_parser("sign", help="sign a repository's manifest.json (bumps its version, sets expiry)")
    p.add_argument("--repo", required=True, metavar="DIR", help="repository directory containing manifest.json")
    p.add_argument("--key", required=True, metavar="FILE", help="private key from `rtxpack keygen`")
    p.add_argument("--expires-in", type=float, default=DEFAULT_EXPIRES_DAYS, metavar="DAYS",
                   help=f"days until installers refuse this manifest (default {DEFAULT_EXPIRES_DAYS})")
    p.add_argument("--version", type=int, default=None, metavar="N",
                   help="manifest version to publish (default: current + 1)")
    add_json(p)
    p.set_defaults(func=_cmd_sign)


def _cmd_keygen(args: "argparse.Namespace") -> int:
    from .cli import emit

    key, pub, kid = keygen(args.out, force=args.force)
    emit(args, {"private_key": str(key), "public_key": str(pub), "keyid": kid},
         f"private key {key} (keep it secret, mode 0600)\npublic key  {pub}\nkeyid       {kid}\n"
         f"ship {pub.name} with your installer and pass it as --trusted-key / trusted_keys=")
    return 0


def _cmd_sign(args: "argparse.Namespace") -> int:
    from .cli import emit

    m = sign_repository(args.repo, args.key, version=args.version, expires_in_days=args.expires_in)
    kid = m.signatures[-1]["keyid"]
    emit(args, {"repo": str(args.repo), "version": m.version, "expires": m.expires, "keyid": kid,
                "artifacts": len(m.artifacts), "signatures": [dict(s) for s in m.signatures]},
         f"signed {Path(args.repo) / MANIFEST_NAME}: version {m.version}, expires {m.expires}, keyid {kid}, "
         f"{len(m.artifacts)} artifacts")
    return 0


def _register() -> None:
    from .repository import register_verifier

    register_verifier(verify_repository)


_register()
