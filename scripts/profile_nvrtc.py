#!/usr/bin/env python3
"""Where an nvrtc plan's time goes: each launch of a corpus model timed on the GPU as the plan's CUDA graph
runs it (replayed from a graph, as the tuner times candidates), summed by kernel family and listed slowest
first.

    python3 scripts/profile_nvrtc.py resnet50-ts vit_b_16-ts --precision fp16 --top 8
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import model_corpus as mc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="corpus model names (tests/models)")
    ap.add_argument("--precision", choices=("fp32", "fp16"), default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--workdir", default="/tmp/rtxpack_profile")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.core.device import detect_gpus

    gpus, _ = detect_gpus()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    report = {}
    for name in args.models:
        path = Path(args.workdir) / f"{name}.onnx"
        if not path.exists():
            mc.materialize(name, args.workdir, seed=0)
        plan = NvrtcBackend().build(path, compute_capabilities=[gpus[0].compute_capability], ptx=False,
                                    profiles=mc.profiles(name), precision=args.precision)
        feeds = mc.typical_inputs(name, seed=1, batch=args.batch)
        with NvrtcBackend().load(plan) as p:
            launches = p.profile(feeds)
            total = p.time_steady(feeds)
        fam: collections.Counter[str] = collections.Counter()
        for ln in launches:
            fam[ln["kernel"].split("<")[0]] += ln["ms"]
        print(f"{name} {args.precision} b{args.batch}: {total:.3f} ms steady, {sum(fam.values()):.3f} ms summed "
              f"over {len(launches)} launches")
        print("  by family: " + ", ".join(f"{k} {v:.3f}" for k, v in fam.most_common()))
        for ln in sorted(launches, key=lambda r: -r["ms"])[:args.top]:
            print(f"  {ln['ms']:.4f} ms  {ln['kernel']} grid {ln['grid']} block {ln['block']}")
        report[name] = {"steady_ms": total, "launches": launches}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
