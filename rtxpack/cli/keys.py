"""Signing commands: ``keygen`` and ``sign``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.signing import DEFAULT_EXPIRES_DAYS, MAX_EXPIRES_DAYS, WARN_EXPIRES_DAYS
from .output import add_json, emit, existing_file, repo_input


def cmd_keygen(args: argparse.Namespace) -> int:
    from ..farm.sign import keygen

    key, pub, kid = keygen(args.out, force=args.force)
    emit(args, {"private_key": str(key), "public_key": str(pub), "keyid": kid},
         f"private key {key} (keep it secret, mode 0600)\npublic key  {pub}\nkeyid       {kid}\n"
         f"ship {pub.name} with your installer and pass it as --trusted-key / trusted_keys=")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from ..core.manifest import MANIFEST_NAME
    from ..farm.sign import sign_repository

    import sys

    repo = repo_input(args.repo)
    if args.key == "-":   # a CI secret piped in: the private key never touches the disk
        key: Any = sys.stdin.buffer.read()
    else:
        key = existing_file(args.key, "--key", what="private key file (rtxpack.key)")
    m = sign_repository(repo, key, version=args.version, expires_in_days=args.expires_in)
    kid = m.signatures[-1]["keyid"]
    emit(args, {"repo": str(args.repo), "version": m.version, "expires": m.expires, "keyid": kid,
                "artifacts": len(m.artifacts), "signatures": [dict(s) for s in m.signatures]},
         f"signed {Path(args.repo) / MANIFEST_NAME}: version {m.version}, expires {m.expires}, keyid {kid}, "
         f"{len(m.artifacts)} artifacts")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("keygen", help="create an ed25519 signing key pair (rtxpack.key + rtxpack.pub)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for rtxpack.key (0600) and rtxpack.pub")
    p.add_argument("--force", action="store_true", help="replace an existing key pair")
    add_json(p)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign a repository's manifest.json (bumps its version, sets expiry)")
    p.add_argument("--repo", required=True, metavar="DIR", help="repository directory containing manifest.json")
    p.add_argument("--key", required=True, metavar="FILE", help="private key from `rtxpack keygen`; - reads it from stdin (a CI secret)")
    p.add_argument("--expires-in", default=DEFAULT_EXPIRES_DAYS, metavar="DAYS",
                   help=f"days until installers refuse this manifest, > 0 and <= {MAX_EXPIRES_DAYS} (default "
                        f"{DEFAULT_EXPIRES_DAYS}; more than {WARN_EXPIRES_DAYS} warns)")
    p.add_argument("--version", type=int, default=None, metavar="N",
                   help="manifest version to publish (default: current + 1)")
    add_json(p)
    p.set_defaults(func=cmd_sign)
