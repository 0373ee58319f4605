"""Farm subcommands for ``rtxpack``: plan, build, merge, bundle, inspect.

``rtxpack.cli`` calls :func:`register`; handlers call the library, print text or JSON, return an
exit code, and raise RtxpackError subclasses that ``rtxpack.cli`` turns into one line + the fix.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _json(args: argparse.Namespace, data: Any) -> bool:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
        return True
    return False


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


# ---- plan --------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from .ci import github_matrix
    from .config import load_config
    from .plan import make_plan

    plan = make_plan(load_config(args.config))
    if args.ci:
        print(json.dumps(github_matrix(plan, per=args.per)))
        return 0
    if _json(args, plan.to_dict()):
        return 0
    print(f"{plan.config.path}: {len(plan.cells)} cells, {len(plan.buildable)} to build, {len(plan.skipped)} skipped")
    for c in plan.cells:
        state = "build" if not c.skipped else "SKIP "
        print(f"  {state} {c.id[:16]}  {c.model} x {c.target} [{','.join(c.compute_capabilities)}] x {c.toolchain}"
              + (f"\n         reason: {c.skipped}" if c.skipped else ""))
    return 0


# ---- build -------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    from .build import build

    progress = None if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    report = build(args.config, args.repo, jobs=args.jobs, cells=args.cell or None, progress=progress)
    if not _json(args, report.to_dict()):
        d = report.to_dict()
        print(f"{report.repo}: {d['built']} built, {d['up_to_date']} up to date, {d['skipped']} skipped, "
              f"{d['failed']} failed ({d['seconds']:.1f} s)")
        for r in report.results:
            if r.status == "failed":
                print(f"  FAILED {r.cell.id[:16]} {r.cell.model} x {r.cell.target} x {r.cell.toolchain}: {r.error}")
    return 0 if report.ok else 1


# ---- merge -------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from .repo import merge_repositories

    m = merge_repositories(args.parts, args.repo)
    if not _json(args, {"repo": args.repo, "artifacts": len(m), "parts": args.parts}):
        print(f"{args.repo}: {len(m)} artifacts after merging {len(args.parts)} part(s)")
    return 0


# ---- bundle ------------------------------------------------------------------------------------
def cmd_bundle(args: argparse.Namespace) -> int:
    from ..bundle import create_bundle

    ccs = [c.strip() for c in args.cc.split(",") if c.strip()] if args.cc else None
    res = create_bundle(args.repo, args.output, models=args.model or None, compute_capabilities=ccs, os=args.os,
                        compress=args.gzip)
    if not _json(args, res):
        print(f"{res['path']}: {res['artifacts']} artifact(s), {res['bytes']} bytes of blobs")
    return 0


# ---- inspect -----------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from ..inspect import inspect_file

    info = inspect_file(args.file, repo=args.repo)
    if not _json(args, info):
        print(f"{info['file']}: {info['backend']} {info['backend_version']}, "
              f"compute capabilities {', '.join(info['compute_capabilities']) or '(none)'}"
              + (", PTX" if info.get("ptx") else "") + f", {info['size']} bytes, sha256 {info['sha256'][:16]}")
        if "manifest" in info:
            m = info["manifest"]
            if m.get("artifact") is None:
                print(f"  not in {args.repo}")
            else:
                print(f"  manifest entry {m['artifact']}: " + ("matches" if not m["mismatches"] else "MISMATCH"))
                for mm in m["mismatches"]:
                    print(f"    {mm}")
    return 0 if not info.get("manifest", {}).get("mismatches") else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="expand rtxpack.toml into build cells (and the skipped ones)")
    p.add_argument("config", help="path to rtxpack.toml")
    p.add_argument("--ci", choices=["github"], help="print a CI job matrix instead")
    p.add_argument("--per", choices=["cell", "toolchain"], default="cell", help="one CI job per cell or per toolchain")
    _add_json(p)
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser("build", help="build the cells of rtxpack.toml into a repository")
    p.add_argument("config", help="path to rtxpack.toml")
    p.add_argument("--repo", required=True, help="repository directory to publish into")
    p.add_argument("-j", "--jobs", type=int, default=1, help="cells built in parallel (processes)")
    p.add_argument("--cell", action="append", default=[], help="build only this cell id (or prefix); repeatable")
    _add_json(p)
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("merge", help="merge repository parts built on different machines")
    p.add_argument("parts", nargs="+", help="repository directories to merge")
    p.add_argument("--repo", required=True, help="destination repository directory")
    _add_json(p)
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser("bundle", help="write an offline bundle (tar) of selected artifacts")
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    p.add_argument("--cc", help="only artifacts for these compute capabilities, e.g. 8.9,12.0")
    p.add_argument("--os", choices=["linux", "windows"], help="only artifacts usable on this OS")
    p.add_argument("--gzip", action="store_true", default=None, help="gzip the tar (default: by .gz/.tgz suffix)")
    p.add_argument("-o", "--output", required=True, help="bundle file to write (.tar or .tar.gz)")
    _add_json(p)
    p.set_defaults(func=cmd_bundle)

    p = subparsers.add_parser("inspect", help="backend, version and compute capabilities of a plan file")
    p.add_argument("file", help="engine / plan file")
    p.add_argument("--repo", help="cross-check against this repository's manifest (directory or URL)")
    _add_json(p)
    p.set_defaults(func=cmd_inspect)
