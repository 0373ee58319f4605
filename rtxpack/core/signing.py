"""ed25519 signatures over manifests: keys, signing and checking a signature (shared by both sides).

The publisher signs (``rtxpack sign``, :mod:`rtxpack.farm.sign`); installers check
(:mod:`rtxpack.installer.trust` adds expiry and rollback policy). A signature covers
:meth:`Manifest.canonical_bytes` (the manifest without its signatures, canonical JSON).

Keys: ``rtxpack.key`` is a PKCS#8 PEM private key (mode 0600); ``rtxpack.pub`` a
SubjectPublicKeyInfo PEM. A keyid is the first 16 hex digits of sha256(raw 32-byte public key).
``cryptography`` is imported lazily (extra ``rtxpack[sign]``): installs of unsigned repositories
do not need it.

Installers check a signature on the raw document before the costly parse
(:func:`check_signature_raw`: size bound, JSON, canonical bytes of the object, ed25519), then
parse, then require that the parsed manifest's canonical bytes are exactly what was signed. Key
files are read only when they are regular files (a fifo or device path is refused unread); a
private key readable by group or others gets ssh's warning.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import stat
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError, ManifestError, SignatureError
from .fsutil import UnsafeFile, read_regular
from .manifest import MAX_MANIFEST_BYTES, Manifest

ALGORITHM = "ed25519"
PRIVATE_NAME = "rtxpack.key"
PUBLIC_NAME = "rtxpack.pub"
DEFAULT_EXPIRES_DAYS = 180
#: ``sign --expires-in`` beyond this is refused (a signature that never expires protects nothing)
MAX_EXPIRES_DAYS = 3650
#: ... and beyond this it warns: a stolen or frozen mirror may serve it that long
WARN_EXPIRES_DAYS = 365
#: a key file is a few hundred bytes
MAX_KEY_BYTES = 64 << 10
_INSTALL_HINT = "pip install 'rtxpack[sign]' (the cryptography package)"


class UnprotectedKeyWarning(UserWarning):
    """A private key file is readable by group or others (ssh refuses such keys)."""


class LongExpiryWarning(UserWarning):
    """A manifest is signed to stay valid for more than WARN_EXPIRES_DAYS."""


# ---- keys ----------------------------------------------------------------------------------------
def _read_key_file(path: Path, what: str, fix: str) -> bytes:
    """A key file's bytes: a regular file of at most MAX_KEY_BYTES (a fifo or device is refused unread)."""
    try:
        return read_regular(path, MAX_KEY_BYTES, follow_links=True)
    except UnsafeFile as e:
        raise ConfigError(f"{what} {e}; refused without reading it", fix=fix, path=str(path)) from e
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}", fix=fix, path=str(path)) from e


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
                          path=source) from e


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
        data = _read_key_file(path, "trusted key", "check --trusted-key / RTXPACK_TRUSTED_KEYS (files separated by "
                                                   f"{os.pathsep!r}, each the rtxpack.pub of `rtxpack keygen`)")
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
    p = Path(path).expanduser()
    data = _read_key_file(p, "signing key", "pass the rtxpack.key written by `rtxpack keygen`")
    _warn_if_unprotected(p)
    return private_key_from_bytes(data, p)


def private_key_from_bytes(data: bytes, p: str | os.PathLike[str] = "(stdin)") -> Any:
    """An ed25519 private key from PEM or a raw 32-byte seed (``p`` names where it came from in errors);
    e.g. a CI secret piped to ``rtxpack sign --key -``."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        elif len(data) == 32:
            key = ed25519.Ed25519PrivateKey.from_private_bytes(data)
        else:
            raise ValueError("neither PEM nor a raw 32-byte seed")
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{p} is not an unencrypted ed25519 private key ({e})",
                          fix="pass the rtxpack.key written by `rtxpack keygen` (not the .pub)", path=str(p)) from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p} holds a {type(key).__name__}, not an ed25519 key",
                          fix="create one with `rtxpack keygen --out DIR`", path=str(p))
    return key


def _warn_if_unprotected(path: Path) -> None:
    """ssh's warning for a private key that group or others may read (POSIX permission bits)."""
    if os.name == "nt":  # pragma: no cover - ACLs, not mode bits
        return
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return
    if mode & 0o077:
        warnings.warn(
            f"WARNING: UNPROTECTED PRIVATE KEY FILE! Permissions 0{mode:o} for '{path}' are too open. "
            "It is required that your private key files are NOT accessible by others "
            f"(fix: chmod 600 {path})", UnprotectedKeyWarning, stacklevel=3)


def check_expires_in(days: Any) -> float:
    """``--expires-in`` as a number of days in (0, MAX_EXPIRES_DAYS]; nonsense (inf, nan, negative,
    zero, garbage, beyond the maximum) is a ConfigError; beyond WARN_EXPIRES_DAYS a warning."""
    try:
        value = float(days)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > MAX_EXPIRES_DAYS:
        raise ConfigError(f"--expires-in {days!r} is not a number of days > 0 and <= {MAX_EXPIRES_DAYS}",
                          fix=f"give a number of days such as {DEFAULT_EXPIRES_DAYS} (installers refuse the manifest "
                              "after that; re-sign before it runs out)", option="--expires-in", value=str(days))
    if value > WARN_EXPIRES_DAYS:
        warnings.warn(f"--expires-in {value:g} days: a stale or frozen mirror may serve this manifest for that long; "
                      f"consider at most {WARN_EXPIRES_DAYS} days and re-signing regularly", LongExpiryWarning,
                      stacklevel=3)
    return value


def generate_keypair() -> tuple[bytes, bytes, str]:
    """A new ed25519 key pair: (private PEM, public PEM, keyid)."""
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, pub, keyid_of(key.public_key())


# ---- signing -------------------------------------------------------------------------------------
def sign_manifest(manifest: Manifest, private_key: Any, *, version: int | None = None,
                  expires_in_days: float | None = DEFAULT_EXPIRES_DAYS, now: datetime | None = None) -> Manifest:
    """A copy of ``manifest`` with ``version`` (default: +1), ``expires``, ``created`` (now) and our signature.

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
        days = check_expires_in(expires_in_days)
        expires = _iso(now + timedelta(days=days))
    # ``created`` becomes the signing time: what installers measure a maximum manifest age from
    signed = replace(manifest, version=new_version, expires=expires, created=_iso(now), signatures=())
    body = signed.canonical_bytes()
    kid = keyid_of(private_key.public_key())
    sig = {"keyid": kid, "algorithm": ALGORITHM, "signature": base64.b64encode(private_key.sign(body)).decode()}
    others = ()
    if body == replace(manifest, signatures=()).canonical_bytes():
        others = tuple(s for s in manifest.signatures if isinstance(s, dict) and s.get("keyid") != kid)
    return replace(signed, signatures=others + (sig,))


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def canonical_body(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers, from a manifest's JSON object: everything but ``signatures``,
    canonical JSON (equal to :meth:`Manifest.canonical_bytes` of a manifest rtxpack wrote)."""
    return json.dumps({k: v for k, v in doc.items() if k != "signatures"}, sort_keys=True,
                      separators=(",", ":")).encode()


def check_signature_raw(raw: bytes, keys: Sequence[TrustedKey], *, repo: str) -> tuple[dict[str, Any], bytes, list[str]]:
    """Verify a manifest's signatures on its raw bytes, before the costly parse.

    The size is bounded first (MAX_MANIFEST_BYTES), then the JSON is decoded (C speed, nothing
    validated yet), then the canonical bytes of the object are checked against every signature
    by a trusted key. Returns (the JSON object, the signed bytes, the keyids whose signature
    verified, in manifest order). Raises ManifestError / SignatureError."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{repo}: the manifest is {len(raw)} bytes, larger than the {MAX_MANIFEST_BYTES}-byte "
                            "limit", fix="check the repository URL", repo=repo)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ManifestError(f"{repo}: the manifest is not valid JSON ({e})", fix="re-publish the repository",
                            repo=repo) from e
    if not isinstance(doc, dict):
        raise ManifestError(f"{repo}: the manifest's top level is not a JSON object", fix="check the repository URL",
                            repo=repo)
    sigs = doc.get("signatures", [])
    if not isinstance(sigs, list) or len(sigs) > 16:
        raise SignatureError(f"{repo}: the manifest's signatures are not a list of at most 16 entries",
                             fix="re-sign the repository with `rtxpack sign`", repo=repo, reason="bad-signature")
    body = canonical_body(doc)
    return doc, body, _verify(body, sigs, keys, repo=repo)


def check_signature(manifest: Manifest, keys: Sequence[TrustedKey], *, repo: str) -> str:
    """The keyid of a trusted key whose signature verifies, else SignatureError."""
    return _verify(manifest.canonical_bytes(), list(manifest.signatures), keys, repo=repo)[0]


def _verify(body: bytes, signatures: Sequence[Any], keys: Sequence[TrustedKey], *, repo: str) -> list[str]:
    """Keyids of the trusted keys whose signature over ``body`` verifies (at least one, else SignatureError)."""
    from cryptography.exceptions import InvalidSignature

    trusted = {k.keyid: k for k in keys}
    seen: list[str] = []
    bad: list[str] = []
    good: list[str] = []
    for sig in signatures:
        kid = str(sig.get("keyid"))[:64] if isinstance(sig, dict) else "?"
        seen.append(kid)
        key = trusted.get(kid)
        if key is None or not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM or kid in good:
            continue
        try:
            raw = base64.b64decode(str(sig.get("signature", ""))[:256], validate=True)
            key.key.verify(raw, body)
        except (InvalidSignature, ValueError, binascii.Error):
            bad.append(kid)
            continue
        good.append(kid)
    if good:
        return good
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


