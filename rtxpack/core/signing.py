"""ed25519 signatures over manifests: keys, signing and checking a signature (shared by both sides).

The publisher signs (``rtxpack sign``, :mod:`rtxpack.farm.sign`); installers check
(:mod:`rtxpack.installer.trust` adds expiry and rollback policy). A signature covers
:meth:`Manifest.canonical_bytes` (the manifest without its signatures, canonical JSON).

Keys: ``rtxpack.key`` is a PKCS#8 PEM private key (mode 0600); ``rtxpack.pub`` a
SubjectPublicKeyInfo PEM. A keyid is the first 16 hex digits of sha256(raw 32-byte public key).
``cryptography`` is imported lazily (extra ``rtxpack[sign]``): installs of unsigned repositories
do not need it.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError, SignatureError
from .manifest import Manifest

ALGORITHM = "ed25519"
PRIVATE_NAME = "rtxpack.key"
PUBLIC_NAME = "rtxpack.pub"
DEFAULT_EXPIRES_DAYS = 180
_INSTALL_HINT = "pip install 'rtxpack[sign]' (the cryptography package)"


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
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"cannot read trusted key {path}: {e.strerror or e}",
                              fix="check --trusted-key / RTXPACK_TRUSTED_KEYS (files separated by "
                                  f"{os.pathsep!r})", path=str(path)) from e
        if len(data) > 64 << 10:
            raise ConfigError(f"trusted key {path} is {len(data)} bytes: not a public key",
                              fix="pass the rtxpack.pub written by `rtxpack keygen`", path=str(path))
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
    if p.is_dir():
        raise ConfigError(f"signing key {p} is a directory", fix=f"pass the key file, e.g. {p / PRIVATE_NAME}",
                          path=str(p))
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read signing key {p}: {e.strerror or e}",
                          fix="pass the rtxpack.key written by `rtxpack keygen`", path=str(p)) from e
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


def check_signature(manifest: Manifest, keys: Sequence[TrustedKey], *, repo: str) -> str:
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


