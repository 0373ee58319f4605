"""Tensor-core GEMM kernels of fp16 plans alone, against cuBLAS (torch fp16 ``F.linear``), per shape.

    python3 scripts/bench_gemm_tc.py [--shapes vit,whisper,bert] [--tiles t64x64,t128x64] [--json OUT]

For each layer shape (M tokens x N outputs x K inputs, batch 1 of the coverage set's transformers)
every tile of kernels_tc.TC_TILES runs with the activation A in fp32 (as plans store activations
today) and in fp16, split-K 1..4 (with its reduce launch), each timed replayed from a CUDA graph over
12 weight copies (so weights stream from memory, as in a model), next to torch's fp16 F.linear
(cuBLAS) timed the same way in the same process. Needs a GPU with torch; prints a table, ``--json``
writes the rows.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # (M, N, K): QKV / out projection / MLP up / MLP down at batch 1
    "vit": [(197, 2304, 768), (197, 768, 768), (197, 3072, 768), (197, 768, 3072)],
    "bert": [(128, 768, 768), (128, 3072, 768), (128, 768, 3072)],
    "whisper": [(1500, 1152, 384), (1500, 384, 384), (1500, 1536, 384), (1500, 384, 1536)],
}
COPIES, REPS = 12, 10

#: tiles outside TC_TILES to try (8 warps a block), name -> (BM, BN, BK, WM, WN, KS)
EXTRA_TILES = {
    "x128x128": (128, 128, 32, 64, 32, 1),
    "x64x128": (64, 128, 32, 32, 32, 1),
    "x128x64w8": (128, 64, 32, 32, 32, 1),
    "x64x64w8": (64, 64, 32, 32, 16, 1),
    "x64x64k64s2": (64, 64, 64, 32, 32, 2),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="vit,bert,whisper")
    ap.add_argument("--tiles", default="", help="comma-separated names of TC_TILES / EXTRA_TILES (default: all)")
    ap.add_argument("--splits", default="1,2,3,4")
    ap.add_argument("--json", default="")
    ap.add_argument("--first", type=int, default=0, help="first shape of each group")
    ap.add_argument("--count", type=int, default=99, help="shapes of each group")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from cuda.bindings import driver as cu

    from rtxpack.backends.nvrtc.compile import compile_program
    from rtxpack.backends.nvrtc.kernels import KernelSpec, entry_name, program_source
    from rtxpack.backends.nvrtc.kernels_tc import SMEM_LIMIT, TC_TILES, WG_TILES, tc_stages

    torch.cuda.init()
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    sm = major * 10 + minor
    wg = WG_TILES if sm == 90 else {}      # Hopper warpgroup MMA (sm_90a)
    tiles = {**TC_TILES, **EXTRA_TILES, **wg}
    names = [t for t in args.tiles.split(",") if t in tiles] if args.tiles else list(tiles)
    specs = {}
    for ah in (0, 1):
        for t in names:
            if t in wg:
                specs[(t, ah)] = KernelSpec("gemm_wg", tiles[t] + (ah, 1, 0))
            elif tc_stages("gemm_tc", tiles[t] + (ah, 1)) >= 2:
                specs[(t, ah)] = KernelSpec("gemm_tc", tiles[t] + (ah, 1, 0))
    red = KernelSpec("gemm_splitk_reduce")
    allspecs = list(specs.values()) + [red]
    print(f"compiling {len(allspecs)} kernels for sm_{sm} ...", flush=True)
    cubin = compile_program(program_source(allspecs), sm)

    def ok(r):
        err, *rest = r
        if int(err) != 0:
            raise RuntimeError(f"CUDA driver error {err}")
        return rest[0] if len(rest) == 1 else rest or None

    torch.zeros(1, device="cuda")        # primary context current
    mod = ok(cu.cuModuleLoadData(cubin))
    funcs = {s: ok(cu.cuModuleGetFunction(mod, entry_name(s).encode())) for s in allspecs}
    for s in allspecs:
        if s.smem_bytes > SMEM_LIMIT:
            ok(cu.cuFuncSetAttribute(funcs[s], cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                     s.smem_bytes))

    def launch(fn, grid, block, fmt, vals, stream, smem=0):
        offs, buf = [], b""
        for f, v in zip(fmt, vals):
            size = struct.calcsize(f)
            buf += b"\0" * ((-len(buf)) % size)
            offs.append(len(buf))
            buf += struct.pack(f, v)
        keep = ctypes.create_string_buffer(buf, len(buf))
        ptrs = (ctypes.c_void_p * len(offs))(*[ctypes.addressof(keep) + o for o in offs])
        ok(cu.cuLaunchKernel(fn, *grid, block, 1, 1, smem, cu.CUstream(stream), ctypes.addressof(ptrs), 0))
        return keep, ptrs

    def graph_ms(body):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            body(s.cuda_stream)               # warm-up (and first-launch checks) outside the graph
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=s):
            for _ in range(REPS):
                body(s.cuda_stream)
        g.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(7):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b) / (REPS * COPIES))
        return sorted(times)[len(times) // 2]

    GEMM_FMT = "PPPPPiiiiiiiiiiiiiiffiiP"
    RED_FMT = "PPPPiiiiiffi"
    rows = []
    for group in args.shapes.split(","):
        for (M, N, K) in SHAPES[group][args.first:args.first + args.count]:
            gen = torch.Generator(device="cuda").manual_seed(0)
            x32 = torch.randn(M, K, device="cuda", generator=gen)
            x16 = x32.half()
            ws16 = [torch.randn(N, K, device="cuda", generator=gen).mul_(K ** -0.5).half() for _ in range(COPIES)]
            b32 = torch.randn(N, device="cuda", generator=gen)
            b16 = b32.half()
            y = torch.empty(M, N, device="cuda")
            ref = F.linear(x16.float(), ws16[-1].float(), b32)
            cublas = graph_ms(lambda st: [F.linear(x16, w, b16) for w in ws16])
            row = {"shape": [M, N, K], "group": group, "cublas_fp16_ms": cublas, "kernels": []}
            best = None
            for (t, ah), spec in specs.items():
                fn, threads, (bm, bn) = funcs[spec], spec.block_threads, spec.targs[:2]
                A = x16 if ah else x32
                for S in [int(s) for s in args.splits.split(",")]:
                    ntile = math.ceil(N / bn) * math.ceil(M / bm)
                    if S > 1 and (K // S < 64 or ntile * S > 4 * 132):
                        continue
                    wsb = torch.empty(S * M * N, device="cuda") if S > 1 else None
                    keep = []

                    def body(st, fn=fn, threads=threads, A=A, S=S, wsb=wsb, bm=bm, bn=bn, smem=spec.smem_bytes):
                        for w in ws16:
                            vals = [A.data_ptr(), w.data_ptr(), b32.data_ptr(), 0, y.data_ptr(), M, N, K, K, 1, 1, K,
                                    1, 0, 0, 0, 0, 0, 1, 1.0, 1.0, 0, S, wsb.data_ptr() if S > 1 else 0]
                            keep.append(launch(fn, (math.ceil(N / bn), math.ceil(M / bm), S), threads, GEMM_FMT,
                                               vals, st, smem))
                            if S > 1:
                                keep.append(launch(funcs[red], (min(4096, math.ceil(M * N / 256)), 1, 1), 256,
                                                   RED_FMT, [wsb.data_ptr(), b32.data_ptr(), 0, y.data_ptr(), M, N,
                                                             S, 0, 1, 1.0, 1.0, 0], st))

                    ms = graph_ms(body)
                    err = float((y - ref).abs().max() / ref.abs().max())
                    row["kernels"].append({"tile": t, "a_fp16": ah, "splits": S, "ms": ms, "rel_err": err})
                    if err > 2e-2:
                        print(f"  WRONG {t} ah={ah} S={S}: rel err {err:.3g}")
                    if best is None or ms < best[0]:
                        best = (ms, t, ah, S)
            b32a = min(k["ms"] for k in row["kernels"] if not k["a_fp16"])
            b16a = min(k["ms"] for k in row["kernels"] if k["a_fp16"])
            flop = 2 * M * N * K
            print(f"{group:8s} M={M:5d} N={N:5d} K={K:5d}  cuBLAS {cublas * 1e3:6.1f} us ({flop / cublas / 1e9:5.0f} TF)"
                  f"  ours A32 {b32a * 1e3:6.1f} us  A16 {b16a * 1e3:6.1f} us ({flop / b16a / 1e9:5.0f} TF)"
                  f"  best {best[1]} ah={best[2]} S={best[3]}", flush=True)
            top = sorted(row["kernels"], key=lambda k: k["ms"])[:5]
            print("    top: " + ", ".join(f"{k['tile']}/a{16 if k['a_fp16'] else 32}/S{k['splits']} "
                                          f"{k['ms'] * 1e3:.1f}" for k in top))
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
