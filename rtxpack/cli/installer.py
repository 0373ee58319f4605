"""Installer commands: ``resolve``, ``install`` and ``cache list|verify|prune``."""
from __future__ import annotations

import argparse
from typing import Any

from ..core import registry
from .output import add_json, add_trust_options, emit, safe_text, trust_kwargs


def cmd_resolve(args: argparse.Namespace) -> int:
    from ..core.resolve import explain, no_match_error
    from ..installer.context import InstallContext
    from ..installer.pipeline import prepare

    ctx = InstallContext.create(progress=False, **trust_kwargs(args))
    prepared = prepare(ctx, args.repo, args.model, onnx=args.onnx, backend=args.backend, gpu_index=args.gpu)
    if prepared.repository is not None:
        prepared.repository.close()
    res = prepared.resolution
    if args.json:
        emit(args, res.to_dict())
    elif args.explain:
        print(safe_text(explain(res), keep_newlines=True))
    elif res.best:
        print(f"{safe_text(res.best.id)}  ({safe_text(res.best.reason)})")
    if not res.candidates:
        if args.json:
            return 1
        raise no_match_error(res, repo=prepared.repository.spec if prepared.repository else None)
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from ..core.resolve import explain
    from ..installer.pipeline import install

    progress = False if args.json else None
    result = install(args.repo, args.model, onnx=args.onnx, backend=args.backend, gpu_index=args.gpu,
                     progress=progress, **trust_kwargs(args))

    def text() -> str:
        res = result.resolution
        best = res.best
        lines = [f"{safe_text(args.model)} on {safe_text(res.target.describe())}:"]
        if best is not None:
            lines.append(f"  chosen {safe_text(best.id)}: {safe_text(best.reason)}")
        for s in result.skipped:
            lines.append(f"  skipped {safe_text(s['id'])}: {safe_text(s['reason'])}")
        for a, p in result.files:
            lines.append(f"  {a.kind:<14} {safe_text(p)}  ({a.size} bytes, sha256 {a.sha256[:12]}… verified now)")
        if best is not None and best.artifact is None:
            lines.append("  nothing to download: rtxpack.load() builds it on this machine from the ONNX and caches it")
        if args.explain:
            lines.append(explain(res))
        return "\n".join(lines)

    emit(args, result.to_dict(), text)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from ..installer.store import Store, parse_size

    store = Store()
    if args.cache_cmd == "list":
        entries = store.entries()
        data = {"root": str(store.root), "entries": [_entry_dict(e) for e in entries],
                "total_bytes": sum(e.size for e in entries)}
        emit(args, data, lambda: "\n".join(
            [f"{e.sha256[:16]}  {e.size:>12}  {safe_text(_meta_label(e))}" for e in entries]
            + [f"{len(entries)} blobs, {data['total_bytes']} bytes in {safe_text(store.root)}"]))
        return 0
    if args.cache_cmd == "verify":
        healed = store.heal()
        results = store.verify()
        bad = [(e, reason) for e, ok, reason in results if not ok]
        data = {"root": str(store.root), "checked": len(results),
                "corrupt": [{**_entry_dict(e), "reason": r} for e, r in bad], "healed": _healed(healed)}
        emit(args, data, lambda: "\n".join(
            [_healed_line(h) for h in healed]
            + [f"corrupt {e.sha256[:16]}: {safe_text(r)}" for e, r in bad]
            + [f"{len(results)} blobs checked, {len(bad)} corrupt, {len(healed)} stray item(s) found"]))
        return 1 if bad or any(h.action != "removed" for h in healed) else 0
    if args.cache_cmd == "prune":
        healed = store.heal()
        removed = store.prune(parse_size(args.max_size))
        data = {"root": str(store.root), "removed": [_entry_dict(e) for e in removed],
                "freed_bytes": sum(e.size for e in removed), "healed": _healed(healed)}
        emit(args, data, lambda: "\n".join([_healed_line(h) for h in healed]
                                           + [f"removed {len(removed)} blobs, freed {data['freed_bytes']} bytes"]))
        return 0
    raise AssertionError(args.cache_cmd)


def _healed(healed: list) -> list[dict]:
    return [{"path": str(h.path), "problem": h.problem, "action": h.action} for h in healed]


def _healed_line(h: Any) -> str:
    return f"stray {safe_text(h.path)}: {safe_text(h.problem)}; {safe_text(h.action)}"


def _entry_dict(e: Any) -> dict:
    return {"sha256": e.sha256, "size": e.size, "path": str(e.path), "last_used": getattr(e, "last_used", None),
            "meta": getattr(e, "meta", None)}


def _meta_label(e: Any) -> str:
    meta = getattr(e, "meta", None)
    if not isinstance(meta, dict):
        return ""
    return " ".join(str(meta[k]) for k in ("model", "kind", "id") if meta.get(k)) or ""


def register(sub: Any) -> None:
    def repo_model(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", required=True, help="repository: http(s) URL, directory or bundle file")
        p.add_argument("--model", required=True, help="model name as in the manifest")
        p.add_argument("--onnx", help="the app's ONNX: enables weight-stripped engines and the JIT fallback")
        p.add_argument("--backend", choices=registry.names(), help="only consider this backend")
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
