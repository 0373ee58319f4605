"""``rtxpack`` command line: thin. Parse, call the library, print text or ``--json``, map errors.

Known errors print one line plus the fix and exit 1; ``RTXPACK_DEBUG=1`` shows the traceback.
Commands of other layers register themselves (``register(subparsers)`` in their own module).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Callable, Sequence

from . import __version__, config
from .errors import RtxpackError

#: modules that add subcommands through ``register(subparsers)``, imported only if present
PLUGINS = ("rtxpack.farm.cli", "rtxpack.trust", "rtxpack.runtime_cli")


def emit(args: argparse.Namespace, data: Any, text: str | Callable[[], str]) -> None:
    """Print ``data`` as JSON under ``--json``, else the human ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text() if callable(text) else text)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def add_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trusted-key", action="append", default=[], metavar="FILE",
                   help="pinned ed25519 public key (repeatable; also RTXPACK_TRUSTED_KEYS)")
    p.add_argument("--require-signed", action="store_true", default=None,
                   help="refuse repositories not signed by a trusted key (also RTXPACK_REQUIRE_SIGNED=1)")


def trust_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if getattr(args, "trusted_key", None):
        out["trusted_keys"] = list(args.trusted_key)
    if getattr(args, "require_signed", None):
        out["require_signed"] = True
    return out


# ---- detect ------------------------------------------------------------------------------------
def cmd_detect(args: argparse.Namespace) -> int:
    from .device import detect

    dev = detect()
    d = dev.to_dict()

    def text() -> str:
        lines = [f"os: {dev.os}" + (f"   (from {dev.source})" if dev.source != "detected" else "")]
        if not dev.gpus:
            lines.append("gpus: none" + (f" ({dev.notes[0]})" if dev.notes else ""))
        for g in dev.gpus:
            mem = f", {g.memory_bytes / 2**30:.1f} GiB" if g.memory_bytes else ""
            drv = f", CUDA driver {g.driver_version}" if g.driver_version else ""
            lines.append(f"gpu {g.index}: {g.name}  CC {g.compute_capability}{mem}{drv}  {g.uuid or ''}".rstrip())
        for name, ver in dev.backends:
            lines.append(f"backend {name}: {ver or 'not installed'}")
        return "\n".join(lines)

    emit(args, d, text)
    return 0


# ---- resolve -----------------------------------------------------------------------------------
def cmd_resolve(args: argparse.Namespace) -> int:
    from .device import detect
    from .install import local_weights_digest
    from .repository import open_repository
    from .resolve import Target, explain, no_match_error, resolve

    repo = open_repository(args.repo, **trust_kwargs(args))
    target = Target.from_device(detect(), args.gpu)
    res = resolve(repo.manifest, target, args.model, weights_digest=local_weights_digest(args.onnx),
                  have_onnx=args.onnx is not None, backend=args.backend)
    if args.json:
        emit(args, res.to_dict(), "")
    elif args.explain:
        print(explain(res))
    elif res.best:
        print(f"{res.best.id}  ({res.best.reason})")
    if not res.candidates:
        if args.json:
            return 1
        raise no_match_error(res, repo=repo.spec)
    return 0


# ---- install -----------------------------------------------------------------------------------
def cmd_install(args: argparse.Namespace) -> int:
    from .install import install
    from .resolve import explain

    progress = False if args.json else None
    result = install(args.repo, args.model, onnx=args.onnx, backend=args.backend, gpu_index=args.gpu,
                     progress=progress, **trust_kwargs(args))

    def text() -> str:
        res = result.resolution
        best = res.best
        lines = [f"{args.model} on {res.target.describe()}:"]
        if best is not None:
            lines.append(f"  chosen {best.id}: {best.reason}")
        for s in result.skipped:
            lines.append(f"  skipped {s['id']}: {s['reason']}")
        for a, p in result.files:
            lines.append(f"  {a.kind:<14} {p}  ({a.size} bytes, sha256 {a.sha256[:12]}… verified)")
        if best is not None and best.artifact is None:
            lines.append("  nothing to download: rtxpack.load() builds it on this machine from the ONNX and caches it")
        if args.explain:
            lines.append(explain(res))
        return "\n".join(lines)

    emit(args, result.to_dict(), text)
    return 0


# ---- cache -------------------------------------------------------------------------------------
def cmd_cache(args: argparse.Namespace) -> int:
    from .store import Store, parse_size

    store = Store()
    if args.cache_cmd == "list":
        entries = store.entries()
        data = {"root": str(store.root), "entries": [_entry_dict(e) for e in entries],
                "total_bytes": sum(e.size for e in entries)}
        emit(args, data, lambda: "\n".join(
            [f"{e.sha256[:16]}  {e.size:>12}  {_meta_label(e)}" for e in entries]
            + [f"{len(entries)} blobs, {data['total_bytes']} bytes in {store.root}"]))
        return 0
    if args.cache_cmd == "verify":
        results = store.verify()
        bad = [(e, reason) for e, ok, reason in results if not ok]
        data = {"root": str(store.root), "checked": len(results),
                "corrupt": [{**_entry_dict(e), "reason": r} for e, r in bad]}
        emit(args, data, lambda: "\n".join(
            [f"corrupt {e.sha256[:16]}: {r} (removed; it is fetched again on the next install)" for e, r in bad]
            + [f"{len(results)} blobs checked, {len(bad)} corrupt"]))
        return 1 if bad else 0
    if args.cache_cmd == "prune":
        removed = store.prune(parse_size(args.max_size))
        data = {"root": str(store.root), "removed": [_entry_dict(e) for e in removed],
                "freed_bytes": sum(e.size for e in removed)}
        emit(args, data, lambda: f"removed {len(removed)} blobs, freed {data['freed_bytes']} bytes")
        return 0
    raise AssertionError(args.cache_cmd)


def _entry_dict(e: Any) -> dict:
    return {"sha256": e.sha256, "size": e.size, "path": str(e.path), "last_used": getattr(e, "last_used", None),
            "meta": getattr(e, "meta", None)}


def _meta_label(e: Any) -> str:
    meta = getattr(e, "meta", None) or {}
    return " ".join(str(meta[k]) for k in ("model", "kind", "id") if meta.get(k)) or ""


# ---- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtxpack", description="Ship GPU inference artifacts to NVIDIA PCs.")
    parser.add_argument("--version", action="version", version=f"rtxpack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("detect", help="describe this machine's GPUs, OS and installed backends")
    add_json(p)
    p.set_defaults(func=cmd_detect)

    def repo_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", required=True, help="repository: http(s) URL, directory or bundle file")
        p.add_argument("--model", required=True, help="model name as in the manifest")
        p.add_argument("--onnx", help="the app's ONNX: enables weight-stripped engines and the JIT fallback")
        p.add_argument("--backend", choices=("tensorrt-rtx", "nvrtc"), help="only consider this backend")
        p.add_argument("--gpu", type=int, default=0, help="GPU index (default 0)")
        p.add_argument("--explain", action="store_true", help="print every candidate and why it ranked or was rejected")
        add_trust_options(p)
        add_json(p)

    p = sub.add_parser("resolve", help="rank the repository's artifacts for this machine")
    repo_model(p)
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("install", help="resolve and download (verified) the best artifact into the local store")
    repo_model(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("cache", help="inspect and maintain the local store")
    csub = p.add_subparsers(dest="cache_cmd", metavar="ACTION")
    csub.required = True
    for name, help_ in (("list", "list stored blobs"), ("verify", "re-hash every blob; remove corrupt ones"),
                        ("prune", "remove least recently used blobs until the store fits")):
        cp = csub.add_parser(name, help=help_)
        if name == "prune":
            cp.add_argument("--max-size", required=True, help="e.g. 2GiB, 500MB, 1048576")
        add_json(cp)
        cp.set_defaults(func=cmd_cache)

    for mod in PLUGINS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue
            raise
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RtxpackError as e:
        if config.debug():
            raise
        if getattr(args, "json", False):
            print(json.dumps(e.to_dict(), indent=2, default=str))
        else:
            print(f"rtxpack: error: {Exception.__str__(e)}", file=sys.stderr)
            if e.fix:
                print(f"  fix: {e.fix}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rtxpack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
