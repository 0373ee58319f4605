#!/usr/bin/env python
"""Cluster benchmark: the same matrix built locally at -j 2 and on a Dask cluster of 2 single-thread
workers on this machine (same cores: expect parity), both as it runs here (a shared filesystem) and
with models and blobs sent as bytes (as to other machines); the scheduling overhead per cell; and
the submitter-side costs that bound a large cluster (manifest writes, blob transfer, task submission).

    python scripts/bench_cluster.py [--runs 2] [--out scripts/BENCH_CLUSTER.md] [--date 2026-11-21]

Real TensorRT-RTX AOT builds on the CPU (the configs of scripts/bench_farm.py). Each throughput
figure builds the same cells into fresh repositories in the order local, cluster, bytes, bytes,
cluster, local, and takes the mean per side; every cluster build gets a freshly started ``dask
scheduler`` and two ``dask worker --nthreads 1`` processes (not timed), so every side starts its
builder processes cold. The cluster time is end to end: connect, plan, submit, build, blobs back,
publish.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_farm import THREE, config, load, machine, realistic_config  # noqa: E402
from daskcluster import DaskCluster  # noqa: E402
from rtxpack.core.manifest import Artifact, blob_relpath  # noqa: E402
from rtxpack.farm import build, load_config, make_plan  # noqa: E402
from rtxpack.farm.cluster import _Tasks, _info, build_on_cluster, connect  # noqa: E402
from rtxpack.farm.cluster_worker import hold  # noqa: E402
from rtxpack.farm.repo import RepositoryWriter  # noqa: E402


def start(work: Path, tag: str) -> DaskCluster:
    c = DaskCluster(work / tag)
    c.start_scheduler()
    for name in ("w1", "w2"):
        c.add_worker(name)
    c.wait_for_workers(["w1", "w2"])
    return c


SIDES = ("local", "cluster", "bytes")
ORDER = ("local", "cluster", "bytes", "bytes", "cluster", "local")


def throughput(cfg: Path, work: Path, tag: str) -> dict[str, object]:
    """Builds of the same cells in the order ORDER: local -j 2; the cluster as it runs here (a shared
    filesystem: models read in place, blobs staged in the repository); the cluster with models and blobs
    sent as bytes (what workers on other machines get). Mean seconds per side, phases per cluster side."""
    n = len(make_plan(load_config(cfg)).buildable)
    secs: dict[str, list[float]] = {s: [] for s in SIDES}
    phases: dict[str, dict[str, float]] = {}   # side -> where its first build's time went
    blob_bytes = 0
    shas: dict[str, list[dict[str, str]]] = {s: [] for s in SIDES}   # cell id -> blob sha256, per build
    for k, side in enumerate(ORDER):
        repo = work / f"{tag}-{side}-{k}"
        if side == "local":
            t = time.perf_counter()
            rep = build(cfg, repo, jobs=2)
            secs[side].append(time.perf_counter() - t)
        else:
            c = start(work, f"{tag}-dask-{k}")
            try:
                t = time.perf_counter()
                rep = build_on_cluster(cfg, repo, cluster=c.address, transfer="auto" if side == "cluster" else "bytes")
                secs[side].append(time.perf_counter() - t)
                phases.setdefault(side, dict(rep.cluster["seconds"], total=secs[side][-1]))
            finally:
                c.stop()
        assert rep.count("built") == n, rep.to_dict()
        shas[side].append({r.cell.id: r.artifact.sha256 for r in rep.results if r.artifact})
        blob_bytes = sum(r.artifact.size for r in rep.results if r.artifact)
        shutil.rmtree(repo, ignore_errors=True)
    assert all(set(m) == set(shas["local"][0]) for v in shas.values() for m in v), "cell ids differ"

    def differ(a: dict[str, str], b: dict[str, str]) -> int:
        return sum(a[c] != b[c] for c in a)
    mean = {s: statistics.mean(v) for s, v in secs.items()}
    local = shas["local"]
    return {"cells": n, "seconds": mean, "phases": phases, "blob_bytes": blob_bytes,
            "overhead_per_cell": {s: (mean[s] - mean["local"]) / n for s in ("cluster", "bytes")},
            # the builder, not the cluster, decides whether a cell's bytes repeat: compare local with local too
            "differ": {"local": differ(local[0], local[1]),
                       **{s: max(differ(local[0], shas[s][0]), differ(local[1], shas[s][1])) for s in ("cluster", "bytes")}}}


def task_overhead(work: Path, n: int = 400) -> dict[str, float]:
    """Round trip of n no-op tasks through the submitter's machinery; the blob return rate for a 64 MiB result."""
    c = start(work, "overhead")
    try:
        with connect(c.address) as client:
            tasks = _Tasks(client, _info(client, c.address), lambda s: None)
            t = time.perf_counter()
            for i in range(n):
                tasks.submit(f"noop-{i}", hold, i, resources=None)
            submitted = time.perf_counter() - t
            tasks.drain(lambda fut: fut.result(), lambda k, why: None)
            total = time.perf_counter() - t
            tasks.close()
            from distributed import wait

            blob = os.urandom(64 << 20)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sending large graph")
                held = client.submit(hold, blob, pure=False)
            wait(held)                                                # the bytes are on a worker (not timed)
            t = time.perf_counter()
            data = client.submit(bytes, held, pure=False).result()   # a copy made there, returned here
            back = time.perf_counter() - t
            assert data == blob
    finally:
        c.stop()
    return {"submit_per_task": submitted / n, "round_trip_per_task": total / n, "blob_mb_s": (64 << 20) / back / 1e6}


def manifest_costs(work: Path, sizes: tuple[int, ...] = (1000, 10000)) -> dict[int, float]:
    """Seconds of one locked manifest write (merge 100 new entries) into a manifest of N entries."""
    out = {}
    for n in sizes:
        repo = RepositoryWriter(work / f"manifest-{n}")

        def art(i: int) -> Artifact:
            sha = hashlib.sha256(f"{n}-{i}".encode()).hexdigest()
            return Artifact(id=f"m{i % 100}/engine/{sha[:16]}", kind="engine", model=f"m{i % 100}", model_digest="0" * 64,
                            weights_digest="0" * 64, backend="tensorrt-rtx", backend_version="1.7.1.116",
                            compute_capabilities=("8.6", "8.9", "12.0"), size=1, sha256=sha, path=blob_relpath(sha),
                            cell=sha, extra={"target": "t", "toolchain": "x"})
        repo.add_artifacts([art(i) for i in range(n)])
        t = time.perf_counter()
        repo.add_artifacts([art(n + i) for i in range(100)])
        out[n] = time.perf_counter() - t
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as Markdown here")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rtxpack-bench-cluster-"))
    os.environ["RTXPACK_CACHE_DIR"] = str(work / "cache")
    runs = []
    try:
        for i in range(args.runs):
            r: dict[str, object] = {"load_before": load()}
            r["small"] = throughput(config(work / f"small{i}", 3, True, THREE), work, f"small{i}")
            r["real"] = throughput(realistic_config(work / f"real{i}", THREE), work, f"real{i}")
            r["load_after"] = load()
            runs.append(r)
            print(f"run {i + 1}: load {r['load_before']:.2f} -> {r['load_after']:.2f}", file=sys.stderr)
        tasks = task_overhead(work)
        manifest = manifest_costs(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def cols(f, fmt) -> list[str]:  # type: ignore[no-untyped-def]
        vals = [f(r) for r in runs]
        return [fmt(v) for v in vals] + [fmt(statistics.median(vals))]

    rows: list[tuple[str, list[str]]] = []
    what = {"local": "local -j 2", "cluster": "cluster, 2 workers x 1 thread (shared filesystem)",
            "bytes": "cluster, 2 workers x 1 thread, models and blobs as bytes"}
    for key, label in (("small", "example cells (3 MLP + small CNN x 3 targets)"),
                       ("real", "realistic cells (ResNet-50/26/14 + MLP, x 3 targets)")):
        n = runs[0][key]["cells"]
        for side in SIDES:
            rows.append((f"{label}, {n} cells, {what[side]}",
                         cols(lambda r, s=side, k=key: r[k]["seconds"][s],
                              lambda s, n=n: f"{s:.2f} s = {n / s * 60:.0f} cells/min")))
        for side in ("cluster", "bytes"):
            rows.append((f"{label}: {side} / local cells per minute; overhead per cell",
                         [f"{r[key]['seconds']['local'] / r[key]['seconds'][side]:.2f}x; "
                          f"{r[key]['overhead_per_cell'][side] * 1000:+.0f} ms" for r in runs]
                         + [f"{statistics.median(r[key]['seconds']['local'] / r[key]['seconds'][side] for r in runs):.2f}x; "
                            f"{statistics.median(r[key]['overhead_per_cell'][side] for r in runs) * 1000:+.0f} ms"]))
        rows.append((f"{label}: cells whose blob sha256 differs from local run 1 (local run 2 / cluster / bytes)",
                     [f"{r[key]['differ']['local']} / {r[key]['differ']['cluster']} / {r[key]['differ']['bytes']} of {n}"
                      for r in runs] + [""]))
    rows.append(("1-minute load average before -> after the run",
                 [f"{r['load_before']:.2f} -> {r['load_after']:.2f}" for r in runs] + [""]))
    extra = [
        f"no-op task through the submitter (submit + done callback + result), 400 tasks, 2 workers: "
        f"{tasks['round_trip_per_task'] * 1000:.2f} ms per task ({tasks['submit_per_task'] * 1000:.2f} ms of it "
        f"client.submit)",
        f"a 64 MiB result returned from a worker to the submitter over loopback: {tasks['blob_mb_s']:.0f} MB/s",
    ] + [f"one locked manifest write merging 100 new entries into {n:,} entries: {s:.2f} s" for n, s in manifest.items()]
    for key in ("small", "real"):
        n = runs[0][key]["cells"]
        extra.append(f"{key}: {n} cells, {runs[0][key]['blob_bytes'] / 1e6:.1f} MB of blobs")
        for side, ph in runs[0][key]["phases"].items():
            extra.append(f"{key}, {what[side]}: first build {ph['total']:.2f} s wall; summed over cells: worker "
                         f"inputs (model files) {ph['inputs']:.2f} s, builder {ph['builder']:.2f} s, worker blob read + "
                         f"sha256 {ph['blob']:.2f} s, submitter fetch {ph['fetch']:.2f} s, submitter publish (sha256 + "
                         f"move or write) {ph['publish']:.2f} s")
    print(f"date {args.date}; {machine()}")
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  " + " | ".join(v))
    for e in extra:
        print(e)
    if args.out:
        head = "| measurement | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |"
        lines = [f"# Cluster benchmark ({args.date})", "", f"Machine: {machine()}.", "",
                 f"Command: `python scripts/bench_cluster.py --runs {len(runs)} --out scripts/BENCH_CLUSTER.md`. "
                 "Each row is the mean of two builds, run in the order local, cluster, bytes, bytes, cluster, "
                 "local; every cluster build starts a fresh `dask scheduler` + 2 `dask worker --nthreads 1` "
                 "(start-up not timed; connect, plan, submit, build, return and publish timed).", "",
                 head, "|---" * (len(runs) + 2) + "|"] + [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
        lines += ["", "Submitter-side costs (run once):", ""] + [f"- {e}" for e in extra]
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
