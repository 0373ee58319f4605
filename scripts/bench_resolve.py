#!/usr/bin/env python3
"""Resolver latency on a 10,000-entry manifest (target: median <= 1 ms).

Peer measured in the same run: a naive resolver that scans every entry of the manifest (no
per-model index), so the ratio shows what the index buys. Also reports the one-off cost of
loading + validating the manifest JSON and of building the index.

    python scripts/bench_resolve.py [--entries 10000] [--models 250] [--repeat 2000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from manifest_factory import engine, runtime_cache  # noqa: E402
from rtxpack.core.manifest import Manifest  # noqa: E402
from rtxpack.core.resolve import Target, classify as _classify, resolve  # noqa: E402

CC_SETS = [("7.5",), ("8.6",), ("8.9",), ("12.0",), ("8.6", "8.9", "12.0")]
VERSIONS = ["1.6.1.120", "1.7.1.116"]
GPUS = ["NVIDIA GeForce RTX 3080", "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4060", "NVIDIA GeForce RTX 5090"]


def make_manifest(entries: int, models: int) -> Manifest:
    arts = []
    per_model = entries // models
    for m in range(models):
        name = f"model{m:04d}"
        engines = []
        for v in VERSIONS:
            for ccs in CC_SETS:
                engines.append(engine(name, ccs, version=v, size=1000 + m))
        arts.extend(engines)
        i = 0
        while len(engines) + i < per_model:
            e = engines[i % len(engines)]
            cc = e.compute_capabilities[-1]
            arts.append(runtime_cache(e, GPUS[i % len(GPUS)], cc, driver=f"13.{i % 3}"))
            i += 1
    return Manifest(artifacts=tuple(arts[:entries]))


def naive(manifest: Manifest, target: Target, model: str) -> list:
    """Peer: classify by scanning every entry (no index)."""
    ok = [c for a in manifest.artifacts if a.model == model and a.kind == "engine"
          for c in [_classify(a, target, weights_digest=None, backend=None)] if c.ok]
    return sorted(ok, key=lambda c: (c.tier, c.artifact.id))


def timeit(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=10_000)
    ap.add_argument("--models", type=int, default=250)
    ap.add_argument("--repeat", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    m = make_manifest(a.entries, a.models)
    text = m.to_json()
    t0 = time.perf_counter()
    loaded = Manifest.from_json(text)
    load_ms = (time.perf_counter() - t0) * 1e3
    target = Target(cc=(8, 9), os="linux", gpu_name=GPUS[1], driver=(13, 1),
                    backends=(("nvrtc", "1.0.0"), ("tensorrt-rtx", "1.7.1.116")))
    t0 = time.perf_counter()
    resolve(loaded, target, "model0000")                # builds the per-manifest index once
    first_ms = (time.perf_counter() - t0) * 1e3
    models = [f"model{i:04d}" for i in range(0, a.models, max(1, a.models // 50))]
    k = iter(range(10**9))
    ours = timeit(lambda: resolve(loaded, target, models[next(k) % len(models)]), a.repeat)
    k2 = iter(range(10**9))
    peer = timeit(lambda: naive(loaded, target, models[next(k2) % len(models)]), max(50, a.repeat // 20))
    med, p99, peer_med = statistics.median(ours), sorted(ours)[int(len(ours) * 0.99)], statistics.median(peer)
    res = {"entries": len(loaded), "models": a.models, "manifest_load_ms": round(load_ms, 1),
           "first_resolve_ms_incl_index": round(first_ms, 2), "resolve_median_ms": round(med, 4),
           "resolve_p99_ms": round(p99, 4), "naive_scan_median_ms": round(peer_med, 3),
           "speedup_vs_naive": round(peer_med / med, 1), "target_ms": 1.0, "meets_target": med <= 1.0,
           "json_bytes": len(text)}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"manifest: {res['entries']} entries, {a.models} models, {len(text) / 1e6:.1f} MB JSON")
        print(f"{'measure':<34}{'ms':>10}")
        for key in ("manifest_load_ms", "first_resolve_ms_incl_index", "resolve_median_ms", "resolve_p99_ms",
                    "naive_scan_median_ms"):
            print(f"{key:<34}{res[key]:>10}")
        print(f"resolver median vs naive full scan: {res['speedup_vs_naive']}x faster; "
              f"target <= 1 ms: {'met' if res['meets_target'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
