"""Publisher commands: plan, build, merge, bundle, publish, inspect, warm.

Handlers call the library, print text or JSON, return an exit code, and raise RtxpackError
subclasses that :func:`rtxpack.cli.main` turns into one line + the fix. Each handler imports the
part of the library it drives when it runs (the CLI's start-up then costs only argparse: an
unchanged ``rtxpack build`` never loads the installer's HTTP stack).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .output import (add_json, compute_capabilities, emit, existing_file, new_file, repo_input, repo_output,
                     safe_text, say, wants_json)


# ---- plan --------------------------------------------------------------------------------------
def cmd_plan(args: argparse.Namespace) -> int:
    from ..farm.ci import github_matrix
    from ..farm.config import load_config
    from ..farm.plan import make_plan

    plan = make_plan(load_config(existing_file(args.config, "CONFIG", what="config file (rtxpack.toml)")))
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
    from ..core.errors import BuildError
    from ..farm.build import build
    from ..farm.config import load_config
    from ..farm.plan import make_plan
    from ..farm.progress import reporter

    if args.jobs < 1:
        raise BuildError(f"-j {args.jobs}: at least one job is needed", fix="pass -j 1 or more")
    cfg = load_config(existing_file(args.config, "CONFIG", what="config file (rtxpack.toml)"))
    repo = repo_output(args)
    # a live bar on a terminal, one line per cell otherwise; nothing under --json (stdout is the JSON)
    progress = None if wants_json(args) else reporter(sys.stderr)
    cells, plan = args.cell or None, None
    if args.shard:
        plan = make_plan(cfg)
        cells = _shard(plan, args.shard, cells)
        if not cells:
            emit(args, {"repo": str(repo), "cells": [], "shard": args.shard},
                 f"shard {args.shard}: no cell falls in this shard; nothing to build")
            return 0
    if args.cluster:
        from ..farm.cluster import build_on_cluster

        report = build_on_cluster(cfg, repo, cluster=args.cluster, jobs=args.jobs, cells=cells, progress=progress)
    else:
        report = build(cfg, repo, jobs=args.jobs, cells=cells, progress=progress, plan=plan)
    d = report.to_dict()
    all_skipped = bool(report.results) and report.count("skipped") == len(report.results)
    if all_skipped:
        d["error"] = "every selected cell was skipped: nothing could be built on this machine"
    emit(args, d)
    if not wants_json(args):
        print(f"{report.repo}: {d['built']} built, {d['up_to_date']} up to date, {d['skipped']} skipped, "
              f"{d['failed']} failed ({d['seconds']:.1f} s)")
        for r in report.results:
            if r.status == "failed":
                print(f"  FAILED {r.cell.id[:16]} {r.cell.model} x {r.cell.target} x {r.cell.toolchain}: {r.error}")
    if all_skipped and not args.allow_all_skipped:
        if not wants_json(args):
            reasons = sorted({r.error or "" for r in report.results})
            print(f"rtxpack: error: every selected cell was skipped ({'; '.join(reasons)})", file=sys.stderr)
            print("  fix: act on the reasons above, run the cells on a node that can build them, "
                  "or pass --allow-all-skipped", file=sys.stderr)
        return 1
    return 0 if report.ok else 1


def _shard(plan: Any, shard: str, cells: list[str] | None) -> list[str]:
    """The ids of shard ``I/N`` (1-based) of the buildable cells: every N-th, starting at the I-th, in plan
    order (a CI with N parallel jobs gives each job its index: GitLab's CI_NODE_INDEX/CI_NODE_TOTAL)."""
    from ..core.errors import ConfigError
    from ..farm.plan import select

    i, sep, n = shard.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise ConfigError(f"--shard {shard!r} is not I/N with 1 <= I <= N", fix="e.g. --shard 2/4", value=shard,
                          option="--shard")
    pool = [c for c in select(plan, cells) if not c.skipped]
    return [c.id for k, c in enumerate(pool) if k % int(n) == int(i) - 1]


# ---- merge -------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    from ..farm.repo import merge_repositories

    parts = [repo_input(p, "PART") for p in args.parts]
    m = merge_repositories(parts, repo_output(args))
    emit(args, {"repo": args.repo, "artifacts": len(m), "parts": args.parts},
         f"{args.repo}: {len(m)} artifacts after merging {len(args.parts)} part(s)")
    return 0


# ---- bundle ------------------------------------------------------------------------------------
def cmd_bundle(args: argparse.Namespace) -> int:
    from ..farm.bundle import create_bundle

    ccs = compute_capabilities(args.cc)
    repo = repo_input(args.repo)
    out = new_file(args.output, "-o", force=args.force, what="bundle")
    res = create_bundle(repo, out, models=args.model or None, compute_capabilities=ccs, os=args.os,
                        compress=args.gzip)
    emit(args, res, f"{res['path']}: {res['artifacts']} artifact(s), {res['bytes']} bytes of blobs")
    return 0


# ---- publish -----------------------------------------------------------------------------------
def cmd_publish(args: argparse.Namespace) -> int:
    from ..farm.publish import publish

    repo = repo_input(args.repo)
    options = {}
    for item in args.storage_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            from ..core.errors import ConfigError

            raise ConfigError(f"--storage-option {item!r} is not KEY=VALUE",
                              fix="e.g. --storage-option endpoint_url=https://s3.example.com", value=item,
                              option="--storage-option")
        options[key] = value
    rep = publish(repo, args.to, verify=args.verify, jobs=args.jobs, storage_options=options,
                  manifest_max_age=args.manifest_max_age, force=args.force, progress=say(args))
    if not rep.signed:
        print("rtxpack: warning: the published manifest is not signed; installers that pin a key refuse it "
              "(`rtxpack sign --repo DIR --key rtxpack.key`, then publish again)", file=sys.stderr)
    d = rep.to_dict()
    emit(args, d, f"{args.to}: {d['uploaded']} blob(s) uploaded ({d['bytes_uploaded']} bytes), {d['skipped']} "
                  f"already there, {d['verified']} verified; manifest version {d['version']} {d['manifest']}"
                  + ("" if rep.cache_headers else "; no cache headers (this store keeps none: set them on the "
                     "web server)"))
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
        if Path(args.repo).is_dir():
            manifest = Manifest.load(args.repo)
        else:
            with open_repository(args.repo, InstallContext.create(progress=False)) as view:
                manifest = view.manifest
    info = inspect_file(existing_file(args.file, "FILE", what="plan file"), manifest, repo=args.repo)
    emit(args, info)
    if not wants_json(args):
        print(f"{info['file']}: {info['backend']} {info['backend_version']}, "
              f"compute capabilities {', '.join(info['compute_capabilities']) or '(none)'}"
              + (", PTX" if info.get("ptx") else "") + (f", {info['precision']}" if "precision" in info else "")
              + f", {info['size']} bytes, sha256 {info['sha256'][:16]}")
        if "manifest" in info:
            m = info["manifest"]
            if m.get("artifact") is None:
                print(f"  not in {safe_text(args.repo)}")
            else:
                print(f"  manifest entry {safe_text(m['artifact'])}: "
                      + ("matches" if not m["mismatches"] else "MISMATCH"))
                for mm in m["mismatches"]:
                    print(f"    {safe_text(mm)}")
    return 0 if not info.get("manifest", {}).get("mismatches") else 1


# ---- warm --------------------------------------------------------------------------------------
def cmd_warm(args: argparse.Namespace) -> int:
    if args.cluster:
        return _warm_on_cluster(args)
    from ..farm.warm import warm

    config = existing_file(args.config, "CONFIG", what="config file (rtxpack.toml)")
    results = warm(config, repo_input(args.repo), progress=say(args))
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
    p.add_argument("--shard", metavar="I/N", help="build only shard I of N of the buildable cells (CI parallel jobs)")
    p.add_argument("--allow-all-skipped", action="store_true",
                   help="exit 0 even when every selected cell was skipped (nothing buildable on this node)")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory that is not a repository")
    _add_cluster(p, "run the cells as tasks")
    add_json(p)
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("merge", help="merge repository parts built on different machines")
    p.add_argument("parts", nargs="+", help="repository directories to merge")
    p.add_argument("--repo", required=True, help="destination repository directory")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory that is not a repository")
    add_json(p)
    p.set_defaults(func=cmd_merge)

    p = subparsers.add_parser("bundle", help="write an offline bundle (tar) of selected artifacts")
    p.add_argument("--repo", required=True, help="repository directory")
    p.add_argument("--model", action="append", default=[], help="only this model (repeatable)")
    p.add_argument("--cc", help="only artifacts for these compute capabilities, e.g. 8.9,12.0")
    p.add_argument("--os", choices=["linux", "windows"], help="only artifacts usable on this OS")
    p.add_argument("--gzip", action="store_true", default=None, help="gzip the tar (default: by .gz/.tgz suffix)")
    p.add_argument("-o", "--output", required=True, help="bundle file to write (.tar or .tar.gz)")
    p.add_argument("--force", action="store_true", help="replace an existing file at -o")
    add_json(p)
    p.set_defaults(func=cmd_bundle)

    p = subparsers.add_parser("publish", help="upload a repository to a static host (folder, s3://...): blobs "
                                              "first, manifest last")
    p.add_argument("--repo", required=True, help="repository directory (signed: run `rtxpack sign` first)")
    p.add_argument("--to", required=True, metavar="URL",
                   help="destination: a folder, s3://bucket/prefix, or any URL fsspec knows")
    p.add_argument("--verify", choices=["all", "sample", "none"], default="sample",
                   help="read blobs back and hash them: all, or the uploaded ones plus a sample (default)")
    p.add_argument("-j", "--jobs", type=int, default=4, help="parallel uploads (default 4)")
    p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                   help="fsspec option of the store, e.g. endpoint_url=https://... (repeatable)")
    p.add_argument("--manifest-max-age", type=int, default=60, metavar="SECONDS",
                   help="Cache-Control max-age of manifest.json where the store keeps headers (default 60)")
    p.add_argument("--force", action="store_true",
                   help="publish even over a newer (or same-version) signed manifest at the destination")
    add_json(p)
    p.set_defaults(func=cmd_publish)

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
