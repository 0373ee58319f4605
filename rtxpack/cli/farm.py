"""Publisher commands: plan, build, merge, bundle, inspect, warm.

Handlers call the library, print text or JSON, return an exit code, and raise RtxpackError
subclasses that :func:`rtxpack.cli.main` turns into one line + the fix. Each handler imports the
part of the library it drives when it runs (the CLI's start-up then costs only argparse: an
unchanged ``rtxpack build`` never loads the installer's HTTP stack).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .output import add_json, emit, say, wants_json


# ---- plan --------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from ..farm.ci import github_matrix
    from ..farm.config import load_config
    from ..farm.plan import make_plan

    plan = make_plan(load_config(args.config))
    if args.ci:
        print(json.dumps(github_matrix(plan, per=args.per)))
        return 0
    if wants_json(args):
        emit(args, plan.to_dict())
        return 0
    print(f"{plan.config.path}: {len(plan.cells)} cells, {len(plan.buildable)} to build, {len(plan.skipped)} skipped")
    for c in plan.cells:
        state = "build" if not c.skipped else "SKIP "
        print(f"  {state} {c.id[:16]}  {c.model} x {c.target} [{','.join(c.compute_capabilities)}] x {c.toolchain}"
              + (f"\n         reason: {c.skipped}" if c.skipped else ""))
    return 0


# ---- build -------------------------------------------------------------------------------------
def cmd_build(args: argparse.Namespace) -> int:
    progress = say(args)
    if args.cluster:
        from ..farm.cluster import build_on_cluster

        report = build_on_cluster(args.config, args.repo, cluster=args.cluster, jobs=args.jobs,
                                  cells=args.cell or None, progress=progress)
    else:
        from ..farm.build import build

        report = build(args.config, args.repo, jobs=args.jobs, cells=args.cell or None, progress=progress)
    emit(args, report.to_dict())
    if not wants_json(args):
        d = report.to_dict()
        print(f"{report.repo}: {d['built']} built, {d['up_to_date']} up to date, {d['skipped']} skipped, "
              f"{d['failed']} failed ({d['seconds']:.1f} s)")
        for r in report.results:
            if r.status == "failed":
                print(f"  FAILED {r.cell.id[:16]} {r.cell.model} x {r.cell.target} x {r.cell.toolchain}: {r.error}")
    return 0 if report.ok else 1


# ---- merge -------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from ..farm.repo import merge_repositories

    m = merge_repositories(args.parts, args.repo)
    emit(args, {"repo": args.repo, "artifacts": len(m), "parts": args.parts},
         f"{args.repo}: {len(m)} artifacts after merging {len(args.parts)} part(s)")
    return 0


# ---- bundle ------------------------------------------------------------------------------------
def cmd_bundle(args: argparse.Namespace) -> int:
    from ..farm.bundle import create_bundle

    ccs = [c.strip() for c in args.cc.split(",") if c.strip()] if args.cc else None
    res = create_bundle(args.repo, args.output, models=args.model or None, compute_capabilities=ccs, os=args.os,
                        compress=args.gzip)
    emit(args, res, f"{res['path']}: {res['artifacts']} artifact(s), {res['bytes']} bytes of blobs")
    return 0


# ---- inspect -----------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    from ..backends.inspect import inspect_file
    from ..core.manifest import Manifest
    from ..installer.context import InstallContext
    from ..installer.repository import open_repository

    manifest = None
    if args.repo is not None:
        # a local repository directory is read directly (the farm's own output); URLs and bundles go
        # through the installer (signature checks, bundle validation)
        manifest = (Manifest.load(args.repo) if Path(args.repo).is_dir()
                    else open_repository(args.repo, InstallContext.create(progress=False)).manifest)
    info = inspect_file(args.file, manifest, repo=args.repo)
    emit(args, info)
    if not wants_json(args):
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


# ---- warm --------------------------------------------------------------------------------------
def cmd_warm(args: argparse.Namespace) -> int:
    if args.cluster:
        return _warm_on_cluster(args)
    from ..farm.warm import warm

    results = warm(args.config, args.repo, progress=say(args))
    data = {"warmed": sum(r.status == "warmed" for r in results), "skipped": sum(r.status == "skipped" for r in results),
            "failed": sum(r.status == "failed" for r in results), "engines": [r.to_dict() for r in results]}
    emit(args, data, lambda: "\n".join([f"{r.status:<8} {r.engine}: {r.reason}" for r in results]
                                       + [f"{data['warmed']} warmed, {data['skipped']} skipped, {data['failed']} failed"]))
    return 1 if data["failed"] else 0


def _warm_on_cluster(args: argparse.Namespace) -> int:
    from ..farm.cluster import warm_on_cluster

    report = warm_on_cluster(args.config, args.repo, cluster=args.cluster, jobs=args.jobs, progress=say(args))
    data = report.to_dict()

    def text() -> str:
        lines = [f"{r.status:<8} {r.engine} [{r.gpu}]" + (f" on {r.worker}" if r.worker else "") + f": {r.reason}"
                 for r in report.results]
        lines += [f"missing  {m['sku']}: {m['reason']}" for m in report.missing]
        lines.append(f"{data['warmed']} warmed, {data['skipped']} skipped, {data['failed']} failed; "
                     f"{len(report.gpus) - len(report.missing)} of {len(report.gpus)} GPU SKU(s) had a worker"
                     + (f" (none for: {', '.join(m['sku'] for m in report.missing)})" if report.missing else ""))
        return "\n".join(lines)
    emit(args, data, text)
    return 1 if data["failed"] else 0


def _add_cluster(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--cluster", metavar="ADDRESS",
                   help=f"{what} on a Dask distributed scheduler (tcp://host:8786), or 'local' for -j workers in this "
                        "process; needs rtxpack[cluster]")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="expand rtxpack.toml into build cells (and the skipped ones)")
    p.add_argument("config", help="path to rtxpack.toml")
    p.add_argument("--ci", choices=["github"], help="print a CI job matrix instead")
    p.add_argument("--per", choices=["cell", "toolchain"], default="cell", help="one CI job per cell or per toolchain")
    add_json(p)
    p.set_defaults(func=cmd_plan)

    p = subparsers.add_parser("build", help="build the cells of rtxpack.toml into a repository")
    p.add_argument("config", help="path to rtxpack.toml")
    p.add_argument("--repo", required=True, help="repository directory to publish into")
    p.add_argument("-j", "--jobs", type=int, default=1, help="cells built in parallel (processes)")
    p.add_argument("--cell", action="append", default=[], help="build only this cell id (or prefix); repeatable")
    _add_cluster(p, "run the cells as tasks")
    add_json(p)
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("merge", help="merge repository parts built on different machines")
    p.add_argument("parts", nargs="+", help="repository directories to merge")
    p.add_argument("--repo", required=True, help="destination repository directory")
    add_json(p)
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser("bundle", help="write an offline bundle (tar) of selected artifacts")
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    p.add_argument("--cc", help="only artifacts for these compute capabilities, e.g. 8.9,12.0")
    p.add_argument("--os", choices=["linux", "windows"], help="only artifacts usable on this OS")
    p.add_argument("--gzip", action="store_true", default=None, help="gzip the tar (default: by .gz/.tgz suffix)")
    p.add_argument("-o", "--output", required=True, help="bundle file to write (.tar or .tar.gz)")
    add_json(p)
    p.set_defaults(func=cmd_bundle)

    p = subparsers.add_parser("inspect", help="backend, version and compute capabilities of a plan file")
    p.add_argument("file", help="engine / plan file")
    p.add_argument("--repo", help="cross-check against this repository's manifest (directory or URL)")
    add_json(p)
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("warm", help="run warm-up shapes on this GPU and add runtime caches to a repository")
    p.add_argument("config", help="rtxpack.toml (for the ONNX files and warm-up shapes)")
    p.add_argument("--repo", required=True, help="repository directory to add runtime caches to")
    _add_cluster(p, "warm on one worker of every [[gpus]] SKU")
    p.add_argument("-j", "--jobs", type=int, default=2, help="with --cluster local: workers")
    add_json(p)
    p.set_defaults(func=cmd_warm)
