#!/usr/bin/env python3
"""The nvrtc backend against PyTorch's strongest peers, same GPU, same run (needs a GPU and torch).

For each model of the set, fp32 and fp16, batch 1 and 8:
  * steady-state latency: nvrtc (its CUDA graph replay, the tuned kernels), PyTorch eager captured in
    a CUDA graph, and ``torch.compile(mode="reduce-overhead")`` (median of ``--iters`` CUDA-event
    timings each; fp32 with TF32 off everywhere);
  * time to first inference: nvrtc cold (load + first run with an empty runtime cache: tuning
    included), nvrtc warm (load + first run with the runtime cache the cold run saved: tuned choices
    and cubins), and torch.compile's first call (its compile time);
  * fp16 accuracy: nvrtc's fp16 output against onnxruntime's fp32 (error / output scale).
Each model runs in a fresh process. PyTorch runs the same architecture with its own initial weights
(kernel times do not depend on weight values); nvrtc runs the corpus ONNX with weights from seed 0.

    python3 scripts/bench_peers.py --json a.json --models resnet50-ts vit_b_16-ts
    python3 scripts/bench_peers.py --report a.json b.json --md scripts/BENCH_PEERS.md --chart scripts/nvrtc_vs_torch.png
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts")]

#: one model per family of the corpus (tests/models), TorchScript exports
MODELS = ["resnet50-ts", "mobilenet_v3_large-ts", "efficientnet_b0-ts", "convnext_tiny-ts", "vit_b_16-ts",
          "swin_t-ts", "bert-ts", "whisper_encoder-ts"]
PRECISIONS = ("fp32", "fp16")
BATCHES = (1, 8)


def _sync() -> None:
    import torch

    torch.cuda.synchronize()


def bench_model(name: str, workdir: str, iters: int, compile_peer: bool, precisions: Any = PRECISIONS,
                batches: Any = BATCHES) -> dict[str, Any]:
    """Everything for one model (runs in its own process)."""
    import torch

    import check_corpus as cc
    import model_corpus as mc
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.core.device import detect_gpus

    rec: dict[str, Any] = {"model": name, "rows": [], "date": dt.date.today().isoformat()}
    try:
        gpus, _ = detect_gpus()
        rec["gpu"] = gpus[0].name
        path = Path(workdir) / f"{name}.onnx"
        if not path.exists():
            mc.materialize(name, workdir, seed=0)
        be = NvrtcBackend()
        for precision in precisions:
            t0 = time.perf_counter()
            plan = be.build(path, compute_capabilities=[gpus[0].compute_capability], ptx=False,
                            profiles=mc.profiles(name), precision=precision)
            build_s = time.perf_counter() - t0
            for batch in batches:
                feeds = mc.typical_inputs(name, seed=1, batch=batch)
                row: dict[str, Any] = {"precision": precision, "batch": batch, "build_s": round(build_s, 2)}
                t0 = time.perf_counter()
                with be.load(plan) as p:
                    y = p.run(feeds)
                    row["nvrtc_cold_first_s"] = round(time.perf_counter() - t0, 3)
                    row["tuning"] = {k: v for k, v in p.tuning.items() if k in ("source", "seconds", "layers",
                                                                                 "distinct", "changed")}
                    cache = p.runtime_cache()
                    row["nvrtc_ms"] = round(p.time_steady(feeds, iters), 4)
                t0 = time.perf_counter()
                with be.load(plan, runtime_cache=cache) as p:
                    p.run(feeds)
                    row["nvrtc_warm_first_s"] = round(time.perf_counter() - t0, 3)
                    row["warm_tuning_source"] = p.tuning.get("source")
                if batch == 1:
                    ref = cc._ort(path, feeds)
                    row["error_vs_fp32"] = float(f"{max(cc._err(y[k], v) for k, v in ref.items()):.3g}")
                module, call = cc.torch_peer_call(name, feeds, half=precision == "fp16")
                row["torch_cuda_graph_ms"] = round(cc.cuda_graph_ms(call, iters), 4)
                compiled = None
                if compile_peer:
                    torch._dynamo.reset()
                    compiled = torch.compile(module, mode="reduce-overhead")
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        call(compiled)
                        _sync()
                        row["compile_first_s"] = round(time.perf_counter() - t0, 2)
                        for _ in range(3):
                            call(compiled)
                        _sync()
                        row["torch_compile_ms"] = round(cc.event_ms(lambda: call(compiled), iters), 4)
                module = call = compiled = None   # free the peer's memory before the next one
                torch.cuda.empty_cache()
                peers = [row[k] for k in ("torch_cuda_graph_ms", "torch_compile_ms") if k in row]
                row["best_peer_ms"] = min(peers)
                row["speedup_vs_best_peer"] = round(row["best_peer_ms"] / row["nvrtc_ms"], 3)
                rec["rows"].append(row)
                print(f"{name} {precision} b{batch}: nvrtc {row['nvrtc_ms']} ms, cuda graph "
                      f"{row['torch_cuda_graph_ms']} ms, compile {row.get('torch_compile_ms', '-')} ms "
                      f"({row['speedup_vs_best_peer']}x best peer); first run cold {row['nvrtc_cold_first_s']} s, "
                      f"warm {row['nvrtc_warm_first_s']} s, compile {row.get('compile_first_s', '-')} s", flush=True)
    except Exception as e:  # noqa: BLE001 - a report, not a crash
        rec.update(error=f"{type(e).__name__}: {e}"[:1500], trace=traceback.format_exc()[-3000:])
        print(f"{name}: {rec['error']}", flush=True)
    return rec


def merge(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Records of several runs as one per model: a later run's row (precision, batch) replaces an earlier
    one's; each row keeps the label (else the date) of the run that measured it (``run``)."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        for rec in run:
            cur = out.setdefault(rec["model"], {k: v for k, v in rec.items() if k != "rows"} | {"rows": []})
            cur.update({k: v for k, v in rec.items() if k not in ("rows", "date")})
            for row in rec.get("rows", []):
                row = {"run": rec.get("label") or rec.get("date", ""), **row}
                cur["rows"] = [r for r in cur["rows"] if (r["precision"], r["batch"]) != (row["precision"], row["batch"])]
                cur["rows"].append(row)
    for rec in out.values():
        rec["rows"].sort(key=lambda r: (PRECISIONS.index(r["precision"]), r["batch"]))
    return list(out.values())


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per precision at batch 1 (the issue's targets): geometric mean and minimum of best peer / nvrtc."""
    out: dict[str, Any] = {}
    for precision in PRECISIONS:
        for batch in BATCHES:
            rows = [(r["model"], row) for r in recs for row in r.get("rows", [])
                    if row["precision"] == precision and row["batch"] == batch]
            if not rows:
                continue
            ratios = [row["speedup_vs_best_peer"] for _, row in rows]
            worst = min(rows, key=lambda mr: mr[1]["speedup_vs_best_peer"])
            out[f"{precision}/b{batch}"] = {"models": len(rows), "geomean": round(math.exp(
                sum(math.log(x) for x in ratios) / len(ratios)), 3), "min": worst[1]["speedup_vs_best_peer"],
                "min_model": worst[0]}
    return out


def markdown(recs: list[dict[str, Any]], date: str) -> str:
    gpu = next((r["gpu"] for r in recs if r.get("gpu")), "?")
    lines = [f"# nvrtc against PyTorch ({gpu}, {date})", "",
             "Generated by `python3 scripts/bench_peers.py` (see its docstring). Steady-state milliseconds "
             "(median of CUDA-event timings), speedup = best PyTorch peer / nvrtc (> 1: nvrtc is faster). "
             "First-run seconds are load + first inference in a process that already holds a CUDA context. "
             "Each model's rows come from one process: nvrtc and both peers measured in the same run."]
    runs: dict[str, list[str]] = {}
    for r in recs:
        runs.setdefault(r.get("date", date), []).append(r["model"])
    if len(runs) > 1:
        lines.append("")
        lines.append("Measured on " + "; ".join(f"{d}: {', '.join(ms)}" for d, ms in sorted(runs.items(), reverse=True))
                     + ".")
    many = len({row.get("run", "") for r in recs for row in r.get("rows", [])}) > 1
    if many:
        lines += ["", "Rows come from several runs (column `run`); each row's three timings are from one process."]
    lines += ["",
             "| model | prec | batch | nvrtc ms | CUDA graph ms | compile ms | speedup | nvrtc cold s (tuning s) | "
             "nvrtc warm s | compile first s | fp16 err |" + (" run |" if many else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if many else "")]
    for r in recs:
        if r.get("error"):
            lines.append(f"| {r['model']} | error: {r['error'][:100]} |||||||||| ")
        for row in r.get("rows", []):
            t = row.get("tuning", {})
            lines.append(f"| {r['model']} | {row['precision']} | {row['batch']} | {row['nvrtc_ms']} | "
                         f"{row['torch_cuda_graph_ms']} | {row.get('torch_compile_ms', '-')} | "
                         f"{row['speedup_vs_best_peer']:.2f}x | {row['nvrtc_cold_first_s']} ({t.get('seconds', 0)}) | "
                         f"{row['nvrtc_warm_first_s']} | {row.get('compile_first_s', '-')} | "
                         f"{row.get('error_vs_fp32', '') if row['precision'] == 'fp16' else ''} |"
                         + (f" {row.get('run', '')} |" if many else ""))
    lines += ["", "| precision / batch | models | geomean speedup | lowest |", "|---|---|---|---|"]
    for k, v in summarize(recs).items():
        lines.append(f"| {k} | {v['models']} | {v['geomean']:.2f}x | {v['min']:.2f}x ({v['min_model']}) |")
    return "\n".join(lines) + "\n"


def chart(recs: list[dict[str, Any]], out: Path, date: str) -> Path:
    """Bars: speedup over the best PyTorch peer per model at batch 1, fp32 and fp16; lines at 1 and 0.5."""
    import charts

    plt = charts._plt()
    names = [r["model"].rsplit("-", 1)[0] for r in recs if r.get("rows")]
    fig, ax = plt.subplots(figsize=(9, 3.8), dpi=120)
    for k, (precision, color) in enumerate((("fp32", "#999999"), ("fp16", "#2a7ab9"))):
        vals = [next((row["speedup_vs_best_peer"] for row in r["rows"] if row["precision"] == precision
                      and row["batch"] == 1), 0) for r in recs if r.get("rows")]
        ax.bar([x + (k - 0.5) * 0.4 for x in range(len(names))], vals, width=0.4, color=color,
               label=f"nvrtc {precision}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(0.5, color="#c0392b", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel("best PyTorch peer ms / nvrtc ms")
    gpu = next((r["gpu"] for r in recs if r.get("gpu")), "?")
    ax.set_title(f"Batch 1 on {gpu}: nvrtc vs min(CUDA graph, torch.compile) ({date})", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compiles take minutes)")
    ap.add_argument("--precisions", nargs="*", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    ap.add_argument("--workdir", default="/tmp/rtxpack_bench_peers")
    ap.add_argument("--json", default="", help="write the measurements here")
    ap.add_argument("--report", nargs="*", default=None, help="only merge these JSON files into --md / --chart")
    ap.add_argument("--md", default="")
    ap.add_argument("--chart", default="")
    ap.add_argument("--date", default=dt.date.today().isoformat())
    ap.add_argument("--label", default="", help="names this run's rows in a merged --report (default: its date)")
    args = ap.parse_args(argv)
    if args.report is not None:
        recs = merge([json.loads(Path(f).read_text()) for f in args.report])
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        recs = []
        ctx = multiprocessing.get_context("spawn")
        for name in args.models:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                recs.append(pool.submit(bench_model, name, args.workdir, args.iters, not args.no_compile,
                                        args.precisions, args.batches).result())
                if args.label:
                    recs[-1]["label"] = args.label
            if args.json:
                Path(args.json).write_text(json.dumps(recs, indent=1))
    print(json.dumps(summarize(recs), indent=1))
    if args.md:
        Path(args.md).write_text(markdown(recs, args.date))
    if args.chart:
        chart(recs, Path(args.chart), args.date)
    return 0


if __name__ == "__main__":
    sys.exit(main())
