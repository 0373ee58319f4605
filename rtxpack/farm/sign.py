"""Publisher-side signing: ``rtxpack keygen`` (an ed25519 key pair) and ``rtxpack sign`` (a repository).

The primitives (keys, signatures over the canonical manifest) are in :mod:`rtxpack.core.signing`;
installers check them in :mod:`rtxpack.installer.trust`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import ConfigError, ManifestError
from ..core.fsutil import atomic_write
from ..core.manifest import MANIFEST_NAME, Manifest
from ..core.signing import (DEFAULT_EXPIRES_DAYS, PRIVATE_NAME, PUBLIC_NAME, TrustedKey, check_signature,
                            generate_keypair, keyid_of, load_private_key, private_key_from_bytes,
                            sign_manifest)
from .repo import RepositoryWriter


def keygen(out_dir: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``rtxpack.key`` (0600) and ``rtxpack.pub`` into ``out_dir``; return (key, pub, keyid)."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; keygen writes {PRIVATE_NAME} and {PUBLIC_NAME} into a directory",
                          fix="pass a directory (a new one is created)", path=str(out))
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_NAME, out / PUBLIC_NAME
    if not force and (key_path.exists() or pub_path.exists()):
        raise ConfigError(f"{key_path} or {pub_path} already exists; not overwriting a signing key",
                          fix="choose another --out directory, or pass --force to replace the key pair",
                          path=str(key_path))
    pem, pub, keyid = generate_keypair()
    atomic_write(key_path, pem, mode=0o600)
    atomic_write(pub_path, pub, mode=0o644)
    return key_path, pub_path, keyid


def sign_repository(repo_dir: str | os.PathLike[str], key_path: str | os.PathLike[str] | bytes, *,
                    version: int | None = None, expires_in_days: float | None = DEFAULT_EXPIRES_DAYS) -> Manifest:
    """Sign ``repo_dir/manifest.json`` in place (atomically, under the repository lock).

    ``key_path``: the private key file, or its bytes (a CI secret that never touches the disk)."""
    repo = RepositoryWriter(Path(repo_dir).expanduser())
    mpath = repo.manifest_path()
    if not mpath.is_file():
        raise ManifestError(f"{repo.root} has no {MANIFEST_NAME}", fix="build the repository first (`rtxpack build`)",
                            repo=str(repo.root))
    key = private_key_from_bytes(key_path) if isinstance(key_path, bytes) else load_private_key(key_path)
    with repo.lock():
        manifest = Manifest.load(mpath)
        signed = sign_manifest(manifest, key, version=version, expires_in_days=expires_in_days)
        # self-check before publishing: what we wrote must verify with our own public key
        reread = Manifest.from_json(signed.to_json(), source=str(mpath))
        source = "(stdin)" if isinstance(key_path, bytes) else str(key_path)
        check_signature(reread, [TrustedKey(keyid_of(key.public_key()), key.public_key(), source)],
                        repo=str(repo.root))
        signed.save(mpath)
    return signed
