#!/usr/bin/env python3
"""Serial split-K against split-K through a reduce launch, same models, same GPU, same run.

fp16 plans sum a split tensor-core layer's partials in the tile's last block (``conv_tcs`` /
``gemm_tcs``); plans built before that carry ``conv_tc`` / ``gemm_tc`` and a reducer launch. This builds
each corpus model both ways (the old way by planning with the old families) and times both steady
states, each tuned on this GPU:

    python3 scripts/bench_splitk.py resnet50-ts vit_b_16-ts --json /tmp/splitk.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import model_corpus as mc  # noqa: E402


def build(path: Path, name: str, cc: str, legacy: bool) -> bytes:
    from rtxpack.backends.nvrtc import NvrtcBackend, lowering
    from rtxpack.backends.nvrtc.kernels import KernelSpec

    saved = lowering._conv_specs, lowering._gemm_specs, lowering._tc_family
    if legacy:
        def old(fn, reducer):
            def specs(*a):
                got = fn(*a)
                was = [KernelSpec(k.family[:-1], k.targs) if k.family in ("conv_tcs", "gemm_tcs") else k for k in got]
                return was + ([KernelSpec(reducer)] if was != got else [])
            return specs
        lowering._conv_specs = old(saved[0], "splitk_reduce")
        lowering._gemm_specs = old(saved[1], "gemm_splitk_reduce")
        lowering._tc_family = lambda node, serial, previous: previous
    try:
        return NvrtcBackend().build(path, compute_capabilities=[cc], ptx=False, profiles=mc.profiles(name),
                                    precision="fp16")
    finally:
        lowering._conv_specs, lowering._gemm_specs, lowering._tc_family = saved


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="corpus model names (tests/models)")
    ap.add_argument("--workdir", default="/tmp/rtxpack_splitk")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    from rtxpack.backends.nvrtc import NvrtcBackend
    from rtxpack.core.device import detect_gpus

    cc = detect_gpus()[0][0].compute_capability
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    report = {}
    for name in args.models:
        path = Path(args.workdir) / f"{name}.onnx"
        if not path.exists():
            mc.materialize(name, args.workdir, seed=0)
        feeds = mc.typical_inputs(name, seed=1, batch=1)
        row = {}
        for kind in ("serial", "reduce_launch"):
            with NvrtcBackend().load(build(path, name, cc, kind != "serial")) as p:
                p.run(feeds)
                row[kind] = {"ms": round(p.time_steady(feeds), 4), "launches": len(p.profile(feeds))}
        report[name] = row
        print(f"{name}: serial split-K {row['serial']['ms']} ms ({row['serial']['launches']} launches), "
              f"reduce launch {row['reduce_launch']['ms']} ms ({row['reduce_launch']['launches']} launches)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
