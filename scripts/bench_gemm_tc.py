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

#: an experimental tensor-core GEMM (dynamic shared memory: ST stages of BK; fragments of the next
#: k step loaded while the MMAs of this one issue; B fragments of two n tiles per ldmatrix.x4)
EXP_SOURCE = r"""
template <int WN, int LD>
__device__ __forceinline__ void x_frag_b(unsigned (&b)[WN / 8][2], const unsigned short (*s)[LD], int n0, int kk, int lane) {
  if (WN % 16 == 0) {
#pragma unroll
    for (int j = 0; j < WN / 8; j += 2) {
      unsigned r[4];
      ldmatrix_x4(r, &s[n0 + j * 8 + (lane & 7) + ((lane >> 4) << 3)][kk + ((lane >> 3) & 1) * 8]);
      b[j][0] = r[0]; b[j][1] = r[1]; b[j + 1][0] = r[2]; b[j + 1][1] = r[3];
    }
  } else {
#pragma unroll
    for (int j = 0; j < WN / 8; ++j) tc_frag_b(b[j], s, n0 + j * 8, kk, lane);
  }
}
template <int BK, int WM, int WN, class TA, class TB>
__device__ __forceinline__ void x_step(TA As, TB Bs, float (&acc)[WM / 16][WN / 8][4], int wm0, int wn0, int lane) {
  unsigned a[2][WM / 16][4], b[2][WN / 8][2];
#pragma unroll
  for (int i = 0; i < WM / 16; ++i) tc_frag_a(a[0][i], As, wm0 + i * 16, 0, lane);
  x_frag_b<WN>(b[0], Bs, wn0, 0, lane);
#pragma unroll
  for (int s = 0; s < BK / 16; ++s) {
    if (s + 1 < BK / 16) {
#pragma unroll
      for (int i = 0; i < WM / 16; ++i) tc_frag_a(a[(s + 1) & 1][i], As, wm0 + i * 16, (s + 1) * 16, lane);
      x_frag_b<WN>(b[(s + 1) & 1], Bs, wn0, (s + 1) * 16, lane);
    }
#pragma unroll
    for (int i = 0; i < WM / 16; ++i)
#pragma unroll
      for (int j = 0; j < WN / 8; ++j) mma_m16n8k16_f16f32(acc[i][j], a[s & 1][i], b[s & 1][j], acc[i][j]);
  }
}
template <int BM, int BN, int BK, int WM, int WN, int ST, bool AH>
__device__ void gemm_x(const void* __restrict__ A, const void* __restrict__ B, const float* __restrict__ bias,
                       const float* __restrict__ res, float* __restrict__ Cm, int M, int N, int K, int sAm, int sAk,
                       int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, float alpha,
                       float beta, int relu, int S, float* __restrict__ ws) {
  using TA = typename TcType<AH>::type;
  using TB = unsigned short;
  constexpr int WX = BN / WN, NT = (BM / WM) * WX * 32, LD = BK + 8;
  extern __shared__ __align__(16) unsigned char x_smem[];
  TA (*As)[BM][LD] = reinterpret_cast<TA (*)[BM][LD]>(x_smem);
  TB (*Bs)[BN][LD] = reinterpret_cast<TB (*)[BN][LD]>(x_smem + sizeof(TA) * ST * BM * LD);
  const GemmBlock g = gemm_block<BM, BN, BK>(M, N, K, S, nb1, sA0, sA1, sB0, sB1);
  const long long aofs = g.aofs, bofs = g.bofs;
  const int m0 = g.m0, n0 = g.n0, ke = g.ke;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm0 = (warp / WX) * WM, wn0 = (warp % WX) * WN;
  float acc[WM / 16][WN / 8][4] = {};
  constexpr int VA = AH ? 7 : 3;
  const bool vecA = sAk == 1 && (K & VA) == 0 && (sAm & VA) == 0 && (aofs & VA) == 0 && ((unsigned long long)A & 15) == 0;
  const bool vecB = sBk == 1 && (K & 7) == 0 && (sBn & 7) == 0 && (bofs & 7) == 0 && ((unsigned long long)B & 15) == 0;
  pipelined<BK, ST>(g.kb, ke, [&](int st, int k0) {
    tc_fill<BM, BK, NT>(As[st], A, aofs, m0, M, sAm, sAk, k0, ke, vecA, tid);
    tc_fill<BN, BK, NT>(Bs[st], B, bofs, n0, N, sBn, sBk, k0, ke, vecB, tid);
  }, [&](int st) { x_step<BK, WM, WN>(As[st], Bs[st], acc, wm0, wn0, lane); });
  tc_each<WM, WN>(acc, m0 + wm0, n0 + wn0, M, N, lane, [&](float a, int m, int n) {
    gemm_store(a, m, n, g, M, N, S, ws, bias, sbm, sbn, alpha, beta, res, Cm, relu);
  });
}
"""
#: experimental variants, name -> (BM, BN, BK, WM, WN, ST)
EXP_TILES = {
    "e64x64k64s3": (64, 64, 64, 32, 32, 3), "e64x64k64s5": (64, 64, 64, 32, 32, 5),
    "e128x64k64s4": (128, 64, 64, 64, 32, 4), "e64x128k64s4": (64, 128, 64, 32, 64, 4),
    "e128x128k64s3": (128, 128, 64, 64, 64, 3), "e128x128k32s6w8": (128, 128, 32, 64, 32, 6),
    "e64x32k64s6": (64, 32, 64, 32, 16, 6), "e32x64k64s6": (32, 64, 64, 16, 32, 6),
    "e64x64k32s4": (64, 64, 32, 32, 32, 4),
}
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
    ap.add_argument("--tiles", default="", help="comma-separated TC_TILES names (default: all)")
    ap.add_argument("--splits", default="1,2,3,4")
    ap.add_argument("--json", default="")
    ap.add_argument("--first", type=int, default=0, help="first shape of each group")
    ap.add_argument("--count", type=int, default=99, help="shapes of each group")
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F
    from cuda.bindings import driver as cu

    from rtxpack.backends.nvrtc.compile import compile_program
    from rtxpack.backends.nvrtc.kernels import FAMILIES, KernelSpec, entry_name, program_source
    from rtxpack.backends.nvrtc.kernels_tc import TC_TILES, tc_stages

    torch.cuda.init()
    dev = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(dev)
    sm = major * 10 + minor
    tiles = {**TC_TILES, **EXTRA_TILES}
    names = [t for t in args.tiles.split(",") if t in tiles] if args.tiles else list(tiles)
    specs = {}
    for ah in (0, 1):
        for t in names:
            if tc_stages("gemm_tc", tiles[t] + (ah, 1)) >= 2:
                specs[(t, ah)] = KernelSpec("gemm_tc", tiles[t] + (ah, 1, 0))
    red = KernelSpec("gemm_splitk_reduce")
    allspecs = list(specs.values()) + [red]
    exp, wrappers = {}, ""
    for t, (bm, bn, bk, wm, wn, st) in EXP_TILES.items():
        if args.tiles and t not in args.tiles.split(","):
            continue
        for ah in (0, 1):
            entry = f"x_{t}_a{ah}"
            threads = (bm // wm) * (bn // wn) * 32
            smem = st * (bm * (2 if ah else 4) + bn * 2) * (bk + 8)
            if smem > 227 * 1024:
                continue
            exp[(t, ah)] = (entry, threads, smem, bm, bn)
            wrappers += (f'extern "C" __global__ void __launch_bounds__({threads}) {entry}({FAMILIES["gemm_tc"]}) '
                         f'{{ gemm_x<{bm}, {bn}, {bk}, {wm}, {wn}, {st}, {"true" if ah else "false"}>'
                         f'(A, B, bias, res, Cm, M, N, K, sAm, sAk, sBk, sBn, nb1, sA0, sA1, sB0, sB1, sbm, sbn, '
                         f'alpha, beta, relu, S, ws); }}\n')
    print(f"compiling {len(allspecs) + len(exp)} kernels for sm_{sm} ...", flush=True)
    cubin = compile_program(program_source(allspecs) + EXP_SOURCE + wrappers, sm)

    def ok(r):
        err, *rest = r
        if int(err) != 0:
            raise RuntimeError(f"CUDA driver error {err}")
        return rest[0] if len(rest) == 1 else rest or None

    torch.zeros(1, device="cuda")        # primary context current
    mod = ok(cu.cuModuleLoadData(cubin))
    funcs = {s: ok(cu.cuModuleGetFunction(mod, entry_name(s).encode())) for s in allspecs}
    for key, (entry, threads, smem, bm, bn) in exp.items():
        fn = ok(cu.cuModuleGetFunction(mod, entry.encode()))
        ok(cu.cuFuncSetAttribute(fn, cu.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem))
        funcs[key] = fn

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
            variants = [((t, ah), funcs[spec], spec.block_threads, 0, spec.targs[0], spec.targs[1])
                        for (t, ah), spec in specs.items()]
            variants += [((t, ah), funcs[(t, ah)], threads, smem, bm, bn)
                         for (t, ah), (_, threads, smem, bm, bn) in exp.items()]
            for (t, ah), fn, threads, smem, bm, bn in variants:
                A = x16 if ah else x32
                for S in [int(s) for s in args.splits.split(",")]:
                    ntile = math.ceil(N / bn) * math.ceil(M / bm)
                    if S > 1 and (K // S < 64 or ntile * S > 4 * 132):
                        continue
                    wsb = torch.empty(S * M * N, device="cuda") if S > 1 else None
                    keep = []

                    def body(st, fn=fn, threads=threads, smem=smem, A=A, S=S, wsb=wsb, bm=bm, bn=bn):
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
