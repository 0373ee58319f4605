#!/usr/bin/env python
"""Build-farm benchmark: cells/minute at -j 1 vs -j 2 on the same config (small example cells and
realistic ResNet cells), unchanged rebuild of a 50-cell plan, and repository bytes for one portable
multi-CC engine vs one engine per CC.

    python scripts/bench_farm.py [--runs 2] [--out scripts/BENCH_FARM.md] [--date 2026-11-20]

Uses the real TensorRT-RTX builder of this interpreter (CPU only). Every throughput figure builds
the same cells into a fresh repository at -j 1 and at -j 2 in the same run, in the order
-j 1, -j 2, -j 2, -j 1 (so a load change during the run hits both sides), and takes the mean per
-j. ``--runs K`` repeats the whole measurement K times and reports every run and the median;
the 1-minute load average before and after each run is printed because the machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rtxpack.demo import models as examples  # noqa: E402
from rtxpack.farm import build, load_config, make_plan  # noqa: E402
from rtxpack.core.manifest import Manifest  # noqa: E402

MLP_PROFILE = "[models.inputs.x]\nmin = [1, 64]\nopt = [4, 64]\nmax = [16, 64]\n"
IMG_PROFILE = "[models.inputs.x]\nmin = [1, 3, 224, 224]\nopt = [1, 3, 224, 224]\nmax = [8, 3, 224, 224]\n"
THREE = [["8.6", "8.9", "12.0"], ["12.0"], ["8.9"]]
#: realistic models (rtxpack.demo.models.resnet, bottleneck blocks, 224x224, dynamic batch): name -> layers
RESNETS = {"resnet50": (3, 4, 6, 3), "resnet26": (2, 2, 2, 2), "resnet14": (1, 1, 1, 1)}


def _targets(targets: list[list[str]]) -> list[str]:
    return [f'[[targets]]\nname = "t{k}"\ncompute_capabilities = {ccs!r}\n'.replace("'", '"')
            for k, ccs in enumerate(targets)]


def config(work: Path, n_mlp: int, cnn: bool, targets: list[list[str]]) -> Path:
    """The small example models: n MLPs (dynamic batch) and optionally the small CNN."""
    models = work / "models"
    parts = ['[project]\nname = "bench"\nversion = "1"\n']
    for i in range(n_mlp):
        examples.mlp(models / f"mlp{i}.onnx", seed=i)
        parts.append(f'[[models]]\nname = "mlp{i}"\nonnx = "models/mlp{i}.onnx"\n{MLP_PROFILE}')
    if cnn:
        examples.small_cnn(models / "cnn.onnx")
        parts.append('[[models]]\nname = "cnn"\nonnx = "models/cnn.onnx"\n')
    p = work / "rtxpack.toml"
    p.write_text("".join(parts + _targets(targets)))
    return p


def realistic_config(work: Path, targets: list[list[str]]) -> Path:
    """ResNet-50/26/14 (fp32, 224x224, batch 1..8) and one MLP: builder time 0.1 s to ~2 s per cell."""
    models = work / "models"
    parts = ['[project]\nname = "bench-realistic"\nversion = "1"\n']
    for name, layers in RESNETS.items():
        examples.resnet(models / f"{name}.onnx", layers=layers)
        parts.append(f'[[models]]\nname = "{name}"\nonnx = "models/{name}.onnx"\n{IMG_PROFILE}')
    examples.mlp(models / "mlp.onnx")
    parts.append(f'[[models]]\nname = "mlp"\nonnx = "models/mlp.onnx"\n{MLP_PROFILE}')
    p = work / "rtxpack.toml"
    p.write_text("".join(parts + _targets(targets)))
    return p


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from rtxpack.backends.tensorrt_rtx import installed_version

    v, cuda = installed_version()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, tensorrt-rtx {v} (cu{cuda}), no GPU")


def load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def throughput(cfg: Path, work: Path, tag: str) -> dict[str, object]:
    """Build all cells of ``cfg`` at -j 1, -j 2, -j 2, -j 1, each into a fresh repository."""
    n = len(make_plan(load_config(cfg)).buildable)
    secs: dict[int, list[float]] = {1: [], 2: []}
    info: dict[int, dict] = {}
    per_model: dict[str, list[float]] = {}
    for k, j in enumerate((1, 2, 2, 1)):
        repo = work / f"{tag}-repo-{k}"
        t = time.perf_counter()
        rep = build(cfg, repo, jobs=j)
        dt = time.perf_counter() - t
        assert rep.count("built") == n, rep.to_dict()
        secs[j].append(dt)
        info[j] = {"workers": rep.workers_started, "writes": rep.manifest_writes, "peak": rep.peak_workers}
        if j == 1:
            for r in rep.results:
                per_model.setdefault(r.cell.model, []).append(r.seconds)
        shutil.rmtree(repo, ignore_errors=True)
    mean = {j: statistics.mean(v) for j, v in secs.items()}
    return {"cells": n, "seconds": mean, "rate": {j: n / mean[j] * 60 for j in mean},
            "ratio": mean[1] / mean[2], "info": info,
            "per_model": {m: statistics.mean(v) for m, v in per_model.items()}}


def one_run(work: Path, repeat: int, bytes_too: bool) -> dict[str, object]:
    res: dict[str, object] = {"load_before": load()}
    # 1. throughput on the small example cells (0.05-0.3 s builder time: per-cell overhead dominates)
    res["small"] = throughput(config(work / "tp", 3, True, THREE), work, "tp")
    # 2. throughput on realistic cells (ResNets at 224x224, ~0.5-2 s builder time)
    res["real"] = throughput(realistic_config(work / "real", THREE), work, "real")

    # 3. unchanged rebuild of a 50-cell plan (10 models x 5 targets)
    cfg50 = config(work / "fifty", 10, False, [["8.6", "8.9", "12.0"], ["12.0"], ["8.9"], ["8.6"], ["8.0"]])
    repo50 = work / "fifty-repo"
    shutil.rmtree(repo50, ignore_errors=True)
    t = time.perf_counter()
    first = build(cfg50, repo50, jobs=2)
    res["fifty_first"] = time.perf_counter() - t
    assert first.count("built") == 50, first.to_dict()
    res["fifty_first_info"] = (first.workers_started, first.manifest_writes)
    lib, cli = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        again = build(cfg50, repo50, jobs=2)
        lib.append(time.perf_counter() - t)
        assert again.builder_runs == 0 and again.workers_started == 0 and again.count("up-to-date") == 50
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rtxpack.cli", "build", str(cfg50), "--repo", str(repo50), "--json"],
                       check=True, capture_output=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        cli.append(time.perf_counter() - t)
    res["rebuild_lib"], res["rebuild_cli"] = min(lib), min(cli)

    # 4. repository bytes: one portable engine vs one engine per CC
    if bytes_too:
        sizes = {}
        for name, n_mlp in (("mlp", 1), ("cnn", 0)):
            cfgb = config(work / f"bytes-{name}", n_mlp, name == "cnn", [["8.6", "8.9", "12.0"], ["8.6"], ["8.9"], ["12.0"]])
            repob = work / f"bytes-{name}-repo"
            build(cfgb, repob, jobs=2)
            m = Manifest.load(repob)
            sizes[name] = (sum(a.size for a in m if len(a.compute_capabilities) == 3),
                           sum(a.size for a in m if len(a.compute_capabilities) == 1))
        res["bytes"] = sizes
    res["load_after"] = load()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write the results as Markdown here")
    ap.add_argument("--chart", type=Path, metavar="PNG", help="also draw cells/min against workers (scripts/charts.py)")
    ap.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    ap.add_argument("--runs", type=int, default=2, help="repeat the whole benchmark; report each run and the median")
    ap.add_argument("--repeat", type=int, default=3, help="rebuild timings: best of N")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rtxpack-bench-"))
    os.environ["RTXPACK_CACHE_DIR"] = str(work / "cache")
    runs = []
    try:
        for i in range(args.runs):
            runs.append(one_run(work, args.repeat, bytes_too=(i == 0)))
            r = runs[-1]
            print(f"run {i + 1}: load {r['load_before']:.2f} -> {r['load_after']:.2f}; "
                  f"small {r['small']['ratio']:.2f}x, realistic {r['real']['ratio']:.2f}x", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(f) -> float:  # type: ignore[no-untyped-def]
        return statistics.median(f(r) for r in runs)

    def cols(f, fmt) -> list[str]:  # type: ignore[no-untyped-def]
        return [fmt(f(r)) for r in runs] + [fmt(med(f))]

    rows: list[tuple[str, list[str]]] = []
    for key, label in (("small", "example cells (3 MLP + small CNN x 3 targets)"),
                       ("real", "realistic cells (ResNet-50/26/14 at 224x224 + MLP, x 3 targets)")):
        n = runs[0][key]["cells"]
        for j in (1, 2):
            rows.append((f"{label}, {n} cells, -j {j}",
                         cols(lambda r, j=j, key=key: r[key]["seconds"][j],
                              lambda s, n=n: f"{s:.2f} s = {n / s * 60:.0f} cells/min")))
        rows.append((f"{label}: speed-up -j 2 vs -j 1", cols(lambda r, key=key: r[key]["ratio"], lambda x: f"{x:.2f}x")))
    rows.append(("first build of the 50-cell plan, -j 2", cols(lambda r: r["fifty_first"], lambda s: f"{s:.2f} s")))
    rows.append(("unchanged rebuild, 50 cells, library call (best)", cols(lambda r: r["rebuild_lib"], lambda s: f"{s:.3f} s")))
    rows.append(("unchanged rebuild, 50 cells, `rtxpack build` process (best; target < 2 s)",
                 cols(lambda r: r["rebuild_cli"], lambda s: f"{s:.3f} s")))
    rows.append(("1-minute load average before -> after the run",
                 [f"{r['load_before']:.2f} -> {r['load_after']:.2f}" for r in runs] + [""]))

    r0 = runs[0]
    extra: list[str] = []
    for key in ("small", "real"):
        info = r0[key]["info"]
        extra.append(f"{key}: -j 1 used {info[1]['workers']} worker process(es) and {info[1]['writes']} manifest write(s); "
                     f"-j 2 used {info[2]['workers']} worker processes (at most {info[2]['peak']} alive) and "
                     f"{info[2]['writes']} manifest write(s)")
        pm = r0[key]["per_model"]
        extra.append(f"{key}: mean seconds per cell at -j 1 (worker start of the first cell included, publish "
                     f"included): " + ", ".join(f"{m} {s:.2f}" for m, s in pm.items()))
    w, wr = r0["fifty_first_info"]
    extra.append(f"50-cell first build: {w} worker processes, {wr} manifest write(s)")
    byte_rows = []
    for name, (portable, single) in r0["bytes"].items():
        byte_rows.append((f"{name}: one portable engine (8.6+8.9+12.0)", f"{portable:,} bytes"))
        byte_rows.append((f"{name}: three single-CC engines (8.6, 8.9, 12.0)",
                          f"{single:,} bytes ({single / portable:.2f}x the portable engine)"))

    print(f"date {args.date}; {machine()}")
    width = max(len(k) for k, _ in rows + byte_rows)
    for k, v in rows:
        print(f"{k:<{width}}  " + " | ".join(v))
    for k, v in byte_rows:
        print(f"{k:<{width}}  {v}")
    for e in extra:
        print(e)
    if args.chart:
        import charts

        charts.farm_throughput({label: {j: runs[0][key]["cells"] / med(lambda r, j=j, key=key: r[key]["seconds"][j]) * 60
                                        for j in (1, 2)}
                                for key, label in (("small", "example cells"), ("real", "realistic cells"))}, args.chart)
    if args.out:
        head = "| measurement | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median |"
        lines = [f"# Build-farm benchmark ({args.date})", "", f"Machine: {machine()}.", "",
                 f"Command: `python scripts/bench_farm.py --runs {len(runs)} --out scripts/BENCH_FARM.md`. "
                 "Real TensorRT-RTX AOT builds on the CPU, fp32. Each throughput row is the mean of two builds "
                 "of the same cells into fresh repositories, run in the order -j 1, -j 2, -j 2, -j 1.", "",
                 head, "|---" * (len(runs) + 2) + "|"] + [f"| {k} | " + " | ".join(v) + " |" for k, v in rows]
        lines += ["", "| repository bytes | result |", "|---|---|"] + [f"| {k} | {v} |" for k, v in byte_rows]
        lines += ["", "Counters and per-cell times (run 1):", ""] + [f"- {e}" for e in extra]
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
