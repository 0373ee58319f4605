"""Tensor-core kernels of fp16 plans: implicit-GEMM convolution and batched GEMM on ``mma.sync``.

The k loop is a ``cp.async`` pipeline (``pipelined``): up to 4 stages of k in flight, as many as fit
48 KB of static shared memory (``tc_stages``; Turing and the emulator copy synchronously). Weights are
fp16 in device memory and reach the MMAs through ``ldmatrix`` from shared tiles whose rows are padded
by 8 halves (the eight 16-byte rows a ldmatrix phase reads hit 8 distinct bank groups); fp32
activations are copied as they are and rounded to fp16 as the fragments are built (``tc_frag_a`` /
``tc_frag_b``). Products accumulate in fp32, and the epilogue (bias, residual, activation,
alpha/beta) runs in fp32 on fp32 activations. One warp computes a WM x WN tile with
``mma.m16n8k16`` (two ``m16n8k8`` on Turing); with KS > 1 k slices, KS groups of warps share a tile
and sum through shared memory. Split-K partials use the fp32 reducers of kernels.py
(``splitk_reduce``, ``gemm_splitk_reduce``): a tensor-core launch and its reducer are one tuning
candidate.

The helpers (``mma_m16n8k16_f16f32``, ``ldmatrix_x*``, ``f2h``/``h2f``) are inline PTX on the GPU;
compiled by the CPU emulator of tests/cudaemu (which defines ``RTX_EMULATOR``) they are the
emulator's warp exchanges, so CI runs these very kernels without a GPU.

On Hopper (sm_90a) GEMMs with an fp16 weight also have ``gemm_wg`` candidates: ``wgmma.mma_async``
with B in a 128-byte-swizzled shared tile read through a descriptor and A's fragments in registers,
the pipeline in dynamic shared memory (``WG_SOURCE``, ``WG_TILES``, ``wg_smem_bytes``); the emulator
runs them by the hardware's swizzle rule.
"""
from __future__ import annotations

def _wgmma_asm(n: int) -> str:
    """``wg_mma_issue<n>``: one ``wgmma.mma_async ... m64n<n>k16`` with A in registers (the mma.m16n8k16 A
    fragment of each warp's 16 rows) and B (n x 16, K-major) from shared memory through a descriptor."""
    regs = n // 2
    outs = ", ".join(f"%{i}" for i in range(regs))
    cons = ", ".join(f'"+f"(d[{i // 4}][{i % 4}])' for i in range(regs))
    return (f"template <> __device__ __forceinline__ void wg_mma_issue<{n}>(float (&d)[{n // 8}][4], "
            "const unsigned (&a)[4], unsigned long long desc) {\n"
            f'  asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{regs + 5}, 0;\\n"\n'
            f'               "wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 {{{outs}}}, "\n'
            f'               "{{%{regs}, %{regs + 1}, %{regs + 2}, %{regs + 3}}}, %{regs + 4}, p, 1, 1, 0;\\n}}\\n"\n'
            f"               : {cons}\n"
            '               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(1));\n}\n')


#: N of the Hopper warpgroup MMAs the gemm_wg tiles use
WG_NS = (64, 128)

WG_SOURCE = r"""
// ---- Hopper warpgroup MMA (wgmma, sm_90a). A warpgroup (4 warps, 128 threads) multiplies 64 rows of A,
// each warp holding the mma.m16n8k16 A fragment of its 16 rows in registers, by an N x 16 slice of B
// that the tensor cores read from shared memory, accumulating 64 x N fp32 in the m16n8 C layout per
// 8 columns (d[j][0..3] = C[g][8j + 2t..], C[g + 8][8j + 2t..], as mma.sync's). B tiles are
// [rows][64 halves] in the canonical K-major 128-byte swizzle (PTX ISA, "Shared Memory Matrix
// Layout"): rows 128 bytes apart, 8-row groups 1024 apart (the descriptor's stride byte offset), the
// 16-byte chunk c of row r stored at chunk c ^ (r % 8) - the hardware XORs address bits [4,7) with
// bits [7,10), so a tile starts 1024-byte aligned; a k16 step starts 32 bytes further in. wg_mma's
// emulator branch reads B by that address rule and multiplies with the emulator's mma, so CI checks
// the layout the fills write. Outside sm_90a (and in PTX for other GPUs) the kernels trap: the runtime
// never plans them there (runtime.NvrtcLoadedPlan, wgmma_ok).
#if defined(RTX_EMULATOR)
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)(unsigned long long)p; }
#else
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
#endif
#if defined(RTX_EMULATOR) || !defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ void fence_proxy_async() {}
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() {}
__device__ __forceinline__ void wgmma_wait0() {}
#else
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int N> __device__ void wg_mma_issue(float (&d)[N / 8][4], const unsigned (&a)[4], unsigned long long desc);
""" + "".join(_wgmma_asm(n) for n in WG_NS) + r"""
#endif
template <int N>
__device__ __forceinline__ void wg_mma(float (&d)[N / 8][4], const unsigned (&a)[4], const unsigned short* tile, int kk) {
#if defined(RTX_EMULATOR)
  const unsigned char* base = reinterpret_cast<const unsigned char*>(tile);
  if (reinterpret_cast<unsigned long long>(base) & 1023) __trap();   // the swizzle needs 1024-byte aligned tiles
  const int lane = threadIdx.x & 31;
  for (int j = 0; j < N / 8; ++j) {
    unsigned b[2];
    for (int h = 0; h < 2; ++h) {   // b[h] = B[n][k], B[n][k + 1]: n = 8j + lane / 4, k = 16 kk + 2 (lane % 4) + 8 h
      const int n = j * 8 + (lane >> 2);
      const unsigned long long lin = (unsigned long long)(n >> 3) * 1024 + (n & 7) * 128 + kk * 32 + (2 * (lane & 3) + 8 * h) * 2;
      b[h] = *reinterpret_cast<const unsigned*>(base + (lin ^ (((lin >> 7) & 7) << 4)));
    }
    rtx_emu::mma_m16n8k16_f16f32(d[j], a, b, d[j]);
  }
#elif defined(__CUDA_ARCH_FEAT_SM90_ALL)
  // descriptor: start address >> 4 (bits 0-13), leading byte offset 16 >> 4 (unused by swizzled K-major),
  // stride byte offset 1024 >> 4 (bits 32-45), 128-byte swizzle (bits 62-63 = 1)
  const unsigned addr = smem_u32(tile) + kk * 32;
  const unsigned long long desc = (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
  wg_mma_issue<N>(d, a, desc);
#else
  __trap();   // not sm_90a: gemm_wg is never planned here
#endif
}
"""


MMA_SOURCE = r"""
// ---- tensor-core helpers. Fragments of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16
// with floating point type"), g = lane >> 2, t = lane % 4; element i of a fragment is in register
// i / 2, the even element in the low 16 bits:
//   a[0] = A[g][2t..2t+1]  a[1] = A[g+8][2t..2t+1]  a[2] = A[g][2t+8..2t+9]  a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]  b[1] = B[2t+8..2t+9][g]  c[0..1] = C[g][2t..2t+1]  c[2..3] = C[g+8][2t..2t+1]
// ldmatrix_x{1,2,4}[_trans](r, p): lane 8*j + i passes the address of row i of 8x8 matrix j (16-byte
// aligned rows of 16-bit elements in shared memory); lane l receives in r[j] the elements (row l/4,
// cols 2*(l%4), 2*(l%4)+1) of matrix j (with _trans: rows 2*(l%4), 2*(l%4)+1, col l/4). So for a
// row-major 16x16 f16 tile As, ldmatrix_x4(a, &As[lane % 16][(lane / 16) * 8]) is the a fragment, and
// for an 8x16 (n x k) tile Bt, ldmatrix_x2(b, &Bt[lane % 8][((lane / 8) % 2) * 8]) is the b fragment.
#ifdef RTX_EMULATOR

__device__ __forceinline__ void mma_m16n8k16_f16f32(float d[4], const unsigned a[4], const unsigned b[2],
                                                    const float c[4]) {
  rtx_emu::mma_m16n8k16_f16f32(d, a, b, c);
}
__device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const void* p) { rtx_emu::ldmatrix(r, 1, false, p); }
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* p) { rtx_emu::ldmatrix(r, 2, false, p); }
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* p) { rtx_emu::ldmatrix(r, 4, false, p); }
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const void* p) { rtx_emu::ldmatrix(r, 1, true, p); }
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* p) { rtx_emu::ldmatrix(r, 2, true, p); }
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* p) { rtx_emu::ldmatrix(r, 4, true, p); }
__device__ __forceinline__ unsigned short f2h(float f) { return __half_as_ushort(__float2half_rn(f)); }
__device__ __forceinline__ float h2f(unsigned short h) { return __half2float(__ushort_as_half(h)); }

#else  // NVRTC

__device__ __forceinline__ void mma_m16n8k16_f16f32(float d[4], const unsigned a[4], const unsigned b[2],
                                                    const float c[4]) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#elif __CUDA_ARCH__ >= 750
  // Turing: the k = 0..7 half (a[0], a[1], b[0]) then the k = 8..15 half (a[2], a[3], b[1])
  float t[4];
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
               "{%7, %8, %9, %10};\n"
               : "=f"(t[0]), "=f"(t[1]), "=f"(t[2]), "=f"(t[3])
               : "r"(a[0]), "r"(a[1]), "r"(b[0]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, "
               "{%7, %8, %9, %10};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[2]), "r"(a[3]), "r"(b[1]), "f"(t[0]), "f"(t[1]), "f"(t[2]), "f"(t[3]));
#else
  __trap();  // no tensor cores before Turing: fp16 plans are not built for these GPUs
#endif
}

#define RTX_LDMATRIX(NAME, NUM, SUFFIX, OUTS, ...)                                                      \
  __device__ __forceinline__ void NAME(unsigned r[NUM], const void* p) {                                \
    const unsigned addr = (unsigned)__cvta_generic_to_shared(p);                                          \
    asm volatile("ldmatrix.sync.aligned.m8n8.x" #NUM SUFFIX ".shared.b16 " OUTS ", [%" #NUM "];\n"      \
                 : __VA_ARGS__                                                                           \
                 : "r"(addr));                                                                           \
  }
#if __CUDA_ARCH__ >= 750
RTX_LDMATRIX(ldmatrix_x1, 1, "", "{%0}", "=r"(r[0]))
RTX_LDMATRIX(ldmatrix_x2, 2, "", "{%0, %1}", "=r"(r[0]), "=r"(r[1]))
RTX_LDMATRIX(ldmatrix_x4, 4, "", "{%0, %1, %2, %3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
RTX_LDMATRIX(ldmatrix_x1_trans, 1, ".trans", "{%0}", "=r"(r[0]))
RTX_LDMATRIX(ldmatrix_x2_trans, 2, ".trans", "{%0, %1}", "=r"(r[0]), "=r"(r[1]))
RTX_LDMATRIX(ldmatrix_x4_trans, 4, ".trans", "{%0, %1, %2, %3}", "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]))
#else
__device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const void* p) { __trap(); }
__device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* p) { __trap(); }
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* p) { __trap(); }
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned r[1], const void* p) { __trap(); }
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned r[2], const void* p) { __trap(); }
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* p) { __trap(); }
#endif
#undef RTX_LDMATRIX
__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
__device__ __forceinline__ float h2f(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

#endif  // RTX_EMULATOR
__device__ __forceinline__ unsigned pack_h2(unsigned short lo, unsigned short hi) {
  return (unsigned)lo | ((unsigned)hi << 16);
}
// two floats rounded to fp16 and packed, lo in the low 16 bits (one cvt.rn.f16x2.f32 on Ampere and newer)
__device__ __forceinline__ unsigned f2h2(float lo, float hi) {
#if !defined(RTX_EMULATOR) && __CUDA_ARCH__ >= 800
  unsigned r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return pack_h2(f2h(lo), f2h(hi));
#endif
}

// ---- asynchronous copies global -> shared (cp.async, Ampere and newer). ``ok`` false writes zeros and
// reads nothing (``g`` must still be a valid address). cp_async_wait<N>() waits until at most N
// committed groups are pending. Turing and the CPU emulator copy at once, which every use allows.
#if defined(RTX_EMULATOR) || __CUDA_ARCH__ < 800
__device__ __forceinline__ void cp_async4(void* s, const void* g, bool ok) {
  *static_cast<unsigned*>(s) = ok ? *static_cast<const unsigned*>(g) : 0u;
}
__device__ __forceinline__ void cp_async16(void* s, const void* g, bool ok) {
  *static_cast<uint4*>(s) = ok ? *static_cast<const uint4*>(g) : make_uint4(0u, 0u, 0u, 0u);
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N> __device__ __forceinline__ void cp_async_wait() {}
#else
__device__ __forceinline__ void cp_async4(void* s, const void* g, bool ok) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)),
               "l"(g), "r"(ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void cp_async16(void* s, const void* g, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"((unsigned)__cvta_generic_to_shared(s)),
               "l"(g), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
#endif
""" + WG_SOURCE

#: static shared memory of a block (bytes) and the most k stages a tensor-core GEMM / conv pipelines:
#: as many as fit (the kernels' ``tc_stages`` and the Python ``tc_stages`` below both read these)
SMEM_LIMIT, MAX_STAGES = 48 * 1024, 4
#: dynamic shared memory a gemm_wg block may take (Hopper: 227 KB a block)
WG_SMEM_LIMIT = 227 * 1024

TC_SOURCE = MMA_SOURCE + (f"#define RTX_TC_SMEM {SMEM_LIMIT}\n#define RTX_TC_MAX_STAGES {MAX_STAGES}\n"
                          f"#define RTX_WG_SMEM {WG_SMEM_LIMIT}\n") + r"""
// Operand tiles in shared memory, per pipeline stage: fp16 [rows][BK + 8] (ldmatrix), fp32 [rows][BK + 8]
// (activations copied as they are and rounded to fp16 as fragments are built: float2 loads, rows
// BK + 8 floats apart, so the 16 lanes of a half warp hit 32 distinct banks), or fp32 k-major
// [BK][cols + 4] (the im2col of a convolution, copied along output pixels: conflict-free too).
template <int LD> struct TcKMajor { const float (*s)[LD]; };

template <int LD>
__device__ __forceinline__ void tc_frag_a(unsigned (&r)[4], const unsigned short (*s)[LD], int r0, int kk, int lane) {
  ldmatrix_x4(r, &s[r0 + (lane & 15)][kk + (lane >> 4) * 8]);
}
template <int LD>
__device__ __forceinline__ void tc_frag_a(unsigned (&r)[4], const float (*s)[LD], int r0, int kk, int lane) {
  const int g = lane >> 2, k = kk + 2 * (lane & 3);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 v = *reinterpret_cast<const float2*>(&s[r0 + g + (e & 1) * 8][k + (e >> 1) * 8]);
    r[e] = f2h2(v.x, v.y);
  }
}
template <int LD>
__device__ __forceinline__ void tc_frag_b(unsigned (&r)[2], const unsigned short (*s)[LD], int n0, int kk, int lane) {
  ldmatrix_x2(r, &s[n0 + (lane & 7)][kk + ((lane >> 3) & 1) * 8]);
}
template <int LD>
__device__ __forceinline__ void tc_frag_b(unsigned (&r)[2], const float (*s)[LD], int n0, int kk, int lane) {
  const int g = lane >> 2, k = kk + 2 * (lane & 3);
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    const float2 v = *reinterpret_cast<const float2*>(&s[n0 + g][k + e * 8]);
    r[e] = f2h2(v.x, v.y);
  }
}
template <int LD>
__device__ __forceinline__ void tc_frag_b(unsigned (&r)[2], TcKMajor<LD> t, int n0, int kk, int lane) {
  const int n = n0 + (lane >> 2), k = kk + 2 * (lane & 3);
  r[0] = f2h2(t.s[k][n], t.s[k + 1][n]);
  r[1] = f2h2(t.s[k + 8][n], t.s[k + 9][n]);
}

// KL k (from kb) of a block tile held in shared memory, A (m x k) and B (n x k, or k-major): warp
// (wm0, wn0) accumulates its WM x WN tile into acc.
template <int KL, int WM, int WN, class TA, class TB>
__device__ __forceinline__ void tc_step(TA As, TB Bs, float (&acc)[WM / 16][WN / 8][4], int wm0, int wn0, int kb,
                                        int lane) {
#pragma unroll
  for (int kk = kb; kk < kb + KL; kk += 16) {
    unsigned a[WM / 16][4], b[WN / 8][2];
#pragma unroll
    for (int i = 0; i < WM / 16; ++i) tc_frag_a(a[i], As, wm0 + i * 16, kk, lane);
#pragma unroll
    for (int j = 0; j < WN / 8; ++j) tc_frag_b(b[j], Bs, wn0 + j * 8, kk, lane);
#pragma unroll
    for (int i = 0; i < WM / 16; ++i)
#pragma unroll
      for (int j = 0; j < WN / 8; ++j) mma_m16n8k16_f16f32(acc[i][j], a[i], b[j], acc[i][j]);
  }
}

// Pipeline stages of a tensor-core kernel whose stage takes ``bytes`` of shared memory: as many as
// fit in ``limit`` (RTX_TC_SMEM: static shared memory), at most RTX_TC_MAX_STAGES. kernels_tc.stages_in
// is the same rule in Python.
__host__ __device__ constexpr int tc_stages(int bytes, int limit = RTX_TC_SMEM) {
  return limit / bytes < RTX_TC_MAX_STAGES ? limit / bytes : RTX_TC_MAX_STAGES;
}

// The k loop of the tensor-core kernels: fill(stage, k0) issues the asynchronous copies of the
// BK-slice at k0 into shared stage ``stage`` of ST, step(stage) multiplies one. ST - 1 slices are in
// flight while one is multiplied; one barrier per slice (it also frees the stage the next fill reuses).
// PROXY: the shared stages are read by wgmma (the async proxy): each thread fences its own copies
// into that proxy before the barrier that publishes them.
template <int BK, int ST, bool PROXY = false, class Fill, class Step>
__device__ __forceinline__ void pipelined(int kb, int ke, Fill&& fill, Step&& step) {
  static_assert(ST >= 2, "a pipeline needs two stages");
  const int nk = (ke - kb + BK - 1) / BK;
#pragma unroll 1   // one copy of the fill code: the prologue runs once, its instructions are cold in the i-cache
  for (int s = 0; s < ST - 1; ++s) {
    if (s < nk) fill(s, kb + s * BK);
    cp_async_commit();
  }
  for (int i = 0; i < nk; ++i) {
    cp_async_wait<ST - 2>();
    if (PROXY) fence_proxy_async();
    __syncthreads();
    const int f = i + ST - 1;
    if (f < nk) fill(f % ST, kb + f * BK);
    cp_async_commit();
    step(i % ST);
  }
}

template <bool H> __device__ __forceinline__ unsigned short tc_elem(const void* p, long long i) {
  if (H) return static_cast<const unsigned short*>(p)[i];
  return f2h(static_cast<const float*>(p)[i]);
}

// elements i, i + stride, ... (the first ``count`` of 8; zeros after) as 8 fp16
template <bool H> __device__ __forceinline__ uint4 tc_gather8(const void* p, long long i, int stride, int count) {
  unsigned short h[8];
#pragma unroll
  for (int u = 0; u < 8; ++u) h[u] = u < count ? tc_elem<H>(p, i + (long long)u * stride) : (unsigned short)0;
  return make_uint4(pack_h2(h[0], h[1]), pack_h2(h[2], h[3]), pack_h2(h[4], h[5]), pack_h2(h[6], h[7]));
}

// 8 consecutive elements from element offset i (16-byte aligned for fp16, 32 for fp32) as 8 fp16
template <bool H> __device__ __forceinline__ uint4 tc_vec8(const void* p, long long i) {
  if (H) return *reinterpret_cast<const uint4*>(static_cast<const unsigned short*>(p) + i);
  const float4 a = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
  const float4 b = *reinterpret_cast<const float4*>(static_cast<const float*>(p) + i + 4);
  return make_uint4(pack_h2(f2h(a.x), f2h(a.y)), pack_h2(f2h(a.z), f2h(a.w)), pack_h2(f2h(b.x), f2h(b.y)),
                    pack_h2(f2h(b.z), f2h(b.w)));
}

// Stage a ROWS x BK slice of an operand (rows r0.., k from k0; element (r, k) at ofs + r * sR + k * sK)
// in registers: each thread holds whole runs of 8 k (one 16-byte load when ``vec``: k-contiguous with
// 16-byte aligned rows, else 8 loads), zeros past R rows or at k >= ke. tc_unstage writes them to a
// shared tile s[ROWS][BK + 8].
template <int ROWS, int BK, int NT, bool H>
__device__ __forceinline__ void tc_stage(uint4 (&r)[ROWS * BK / 8 / NT], const void* p, long long ofs, int r0, int R,
                                         int sR, int sK, int k0, int ke, bool vec, int tid) {
#pragma unroll
  for (int t = 0; t < ROWS * BK / 8 / NT; ++t) {
    const int e = tid + t * NT, row = r0 + e / (BK / 8), k = k0 + 8 * (e % (BK / 8));
    const long long at = ofs + (long long)row * sR + (long long)k * sK;
    r[t] = row >= R || k >= ke ? make_uint4(0u, 0u, 0u, 0u) : vec ? tc_vec8<H>(p, at) : tc_gather8<H>(p, at, sK, ke - k);
  }
}
template <int ROWS, int BK, int NT>
__device__ __forceinline__ void tc_unstage(const uint4 (&r)[ROWS * BK / 8 / NT], unsigned short (*s)[BK + 8], int tid) {
#pragma unroll
  for (int t = 0; t < ROWS * BK / 8 / NT; ++t) {
    const int e = tid + t * NT;
    *reinterpret_cast<uint4*>(&s[e / (BK / 8)][8 * (e % (BK / 8))]) = r[t];
  }
}

// Issue the copies of a ROWS x BK slice of an operand (rows r0.., k from k0; element (r, k) at
// ofs + r * sR + k * sK) into a shared stage s[ROWS][BK + 8], zeros past R rows or at k >= ke.
// fp16 (weights): 16-byte copies of 8 k when ``vec`` (k-contiguous, 16-byte aligned rows), else the 8
// halves are gathered and stored at once. fp32 (activations): 16-byte copies of 4 k when ``vec``, else
// one 4-byte copy per element, consecutive threads on consecutive rows when those are adjacent (sR == 1).
template <int ROWS, int BK, int NT>
__device__ __forceinline__ void tc_fill(unsigned short (*s)[BK + 8], const void* p, long long ofs, int r0, int R,
                                        int sR, int sK, int k0, int ke, bool vec, int tid) {
  const unsigned short* __restrict__ h = static_cast<const unsigned short*>(p);
#pragma unroll
  for (int t = 0; t < (ROWS * BK / 8 + NT - 1) / NT; ++t) {
    const int e = tid + t * NT, row = e / (BK / 8), kc = 8 * (e % (BK / 8)), k = k0 + kc;
    if ((ROWS * BK / 8) % NT && e >= ROWS * BK / 8) break;
    const bool ok = r0 + row < R && k < ke;
    const long long rowat = ofs + (long long)(r0 + row) * sR;
    if (vec) cp_async16(&s[row][kc], ok ? h + rowat + k : h, ok);   // vec: sK == 1
    else *reinterpret_cast<uint4*>(&s[row][kc]) = ok ? tc_gather8<true>(p, rowat + (long long)k * sK, sK, ke - k)
                                                     : make_uint4(0u, 0u, 0u, 0u);
  }
}
template <int ROWS, int BK, int NT>
__device__ __forceinline__ void tc_fill(float (*s)[BK + 8], const void* p, long long ofs, int r0, int R, int sR,
                                        int sK, int k0, int ke, bool vec, int tid) {
  const float* __restrict__ f = static_cast<const float*>(p);
  if (vec) {
#pragma unroll
    for (int t = 0; t < (ROWS * BK / 4 + NT - 1) / NT; ++t) {
      const int e = tid + t * NT, row = e / (BK / 4), kc = 4 * (e % (BK / 4)), k = k0 + kc;
      if ((ROWS * BK / 4) % NT && e >= ROWS * BK / 4) break;
      const bool ok = r0 + row < R && k < ke;
      cp_async16(&s[row][kc], ok ? f + ofs + (long long)(r0 + row) * sR + k : f, ok);
    }
    return;
  }
#pragma unroll 4
  for (int t = 0; t < ROWS * BK / NT; ++t) {    // ROWS * BK is a multiple of NT for every tile of TC_TILES
    const int e = tid + t * NT, row = sR == 1 ? e % ROWS : e / BK, kc = sR == 1 ? e / ROWS : e % BK, k = k0 + kc;
    const bool ok = r0 + row < R && k < ke;
    cp_async4(&s[row][kc], ok ? f + ofs + (long long)(r0 + row) * sR + (long long)k * sK : f, ok);
  }
}

// f(value, row, column) for each accumulator element this lane holds of its warp's tile at (r0, c0)
// that lies inside the R x C output (the fragment layout of mma.m16n8k16's C/D).
template <int WM, int WN, class F>
__device__ __forceinline__ void tc_each(const float (&acc)[WM / 16][WN / 8][4], int r0, int c0, int R, int C,
                                        int lane, F&& f) {
#pragma unroll
  for (int i = 0; i < WM / 16; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int j = 0; j < WN / 8; ++j)
#pragma unroll
        for (int u = 0; u < 2; ++u) {
          const int r = r0 + i * 16 + (lane >> 2) + h * 8, c = c0 + j * 8 + 2 * (lane & 3) + u;
          if (r < R && c < C) f(acc[i][j][2 * h + u], r, c);
        }
}

// KS > 1 (in-block split-K): the warps of slice ks multiply k [ks * BK / KS, (ks + 1) * BK / KS) of every
// stage, so a block has KS times the warps on one output tile (more loads and MMAs in flight where
// few tiles cover the output); at the end slices 1.. hand their accumulators to slice 0 through the
// pipeline's shared memory (free once every copy landed), and slice 0 runs the epilogue.
template <int KS, int NTS, int NA>
__device__ __forceinline__ bool tc_slices_sum(float* acc, void* smem, int tid) {
  if (KS == 1) return true;
  const int ks = tid / NTS, t = tid - ks * NTS;
  float* red = static_cast<float*>(smem);   // [KS - 1][NA][NTS]
  cp_async_wait<0>();
  __syncthreads();
  if (ks > 0)
#pragma unroll
    for (int a = 0; a < NA; ++a) red[((ks - 1) * NA + a) * NTS + t] = acc[a];
  __syncthreads();
  if (ks > 0) return false;
  for (int s = 0; s < KS - 1; ++s)
#pragma unroll
    for (int a = 0; a < NA; ++a) acc[a] += red[(s * NA + a) * NTS + t];
  return true;
}

// The epilogue's activation (kernels.epilogue_act) is a template argument ACT of the tensor-core kernels,
// known when the layer is planned: read from the launch in every element, its transcendental branches
// were inlined 32 times into each tile's epilogue, 4,000 of a GEMM's 6,000 instructions, and
// instruction-cache misses stalled a quarter of its warps' cycles on the H100 (scripts/bench_gemm_tc.py).
// Split-K partials (S > 1) are stored as they are, the activation left to the reducer. The launch's
// ``relu`` argument stays (the reducers and the planner's residual folding read it); these kernels use ACT.
// Implicit-GEMM convolution on tensor cores: C[oc, p] = sum_k W[oc, k] * im2col(X)[k, p], W fp16
// [OC][Cg*KH*KW], X/Y fp32 NCHW. Arguments, grid and split-K workspace as conv_igemm.
template <int BM, int BN, int BK, int WM, int WN, int KS, bool K1, int ACT>
__device__ void conv_tc(const float* __restrict__ x, const unsigned short* __restrict__ w,
                        const float* __restrict__ bias, const float* __restrict__ res, float* __restrict__ y, int N,
                        int C, int H, int W, int OC, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw,
                        int dh, int dw, int G, int relu, int S, float* __restrict__ ws,
                        const int4* __restrict__ ktab) {
  constexpr int WX = BN / WN, NTS = (BM / WM) * WX * 32, NT = NTS * KS, LA = BK + 8, LB = BN + 4;
  constexpr int ST = tc_stages(BM * LA * 2 + BK * LB * 4);
  static_assert(sizeof(unsigned short) * ST * BM * LA >= (KS - 1) * BM * BN * sizeof(float), "k-slice sums");
  static_assert(NT % BN == 0 && BK % (NT / BN) == 0, "B loader: one pixel column, a k run per thread");
  constexpr int KR = BK / (NT / BN);   // k run per thread (B)
  __shared__ __align__(16) unsigned short As[ST][BM][LA];   // weights, fp16
  __shared__ __align__(16) float Bs[ST][BK][LB];            // im2col, fp32, k-major
  const int g = blockIdx.z / S, split = blockIdx.z - g * S, Cg = C / G, OCg = OC / G;
  const int M = OCg, OHW = OH * OW, P = N * OHW, KK = KH * KW, K = Cg * KK;
  const int kchunk = ((K + S * BK - 1) / (S * BK)) * BK;
  const int kb = split * kchunk, ke = min(K, kb + kchunk);
  const int m0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
  const int tid = threadIdx.x, lane = tid & 31, warp = (tid % NTS) >> 5, ks = tid / NTS;
  const int wm0 = (warp / WX) * WM, wn0 = (warp % WX) * WN;
  const unsigned short* __restrict__ wg = w + (long long)g * OCg * K;
  float acc[WM / 16][WN / 8][4] = {};
  // this thread's im2col column (output pixel) and k run are fixed: decode the pixel once
  const int bn = tid % BN, kr0 = (tid / BN) * KR;
  const Im2col col = im2col_column<K1>(x, p0 + bn, P, C, g * Cg, H, W, OH, OW, sh, sw, ph, pw);
  const bool vec = (K & 7) == 0 && ((unsigned long long)w & 15) == 0;   // weight rows 16-byte aligned
  pipelined<BK, ST>(kb, ke, [&](int st, int k0) {
    tc_fill<BM, BK, NT>(As[st], wg, 0, m0, M, K, 1, k0, ke, vec, tid);
#pragma unroll
    for (int u = 0; u < KR; ++u) {
      const float* src = col.addr<K1>(k0 + kr0 + u, ke, ktab);
      cp_async4(&Bs[st][kr0 + u][bn], src ? src : x, src != nullptr);
    }
  }, [&](int st) { tc_step<BK / KS, WM, WN>(As[st], TcKMajor<LB>{Bs[st]}, acc, wm0, wn0, ks * (BK / KS), lane); });
  if (!tc_slices_sum<KS, NTS, WM / 16 * WN / 8 * 4>(&acc[0][0][0], As, tid)) return;
  tc_each<WM, WN>(acc, m0 + wm0, p0 + wn0, M, P, lane, [&](float a, int m, int p) {
    const int oc = g * OCg + m;
    if (S > 1) {
      ws[((long long)split * OC + oc) * P + p] = a;
      return;
    }
    const int n = p / OHW, r = p - n * OHW;
    const long long o = ((long long)n * OC + oc) * OHW + r;
    float v = a + (bias ? bias[oc] : 0.f);
    if (res) v += res[o];
    y[o] = epilogue_act(ACT, v);
  });
}

// The GEMM epilogue (kernels.gemm_store) over a warp's accumulators at (r0, c0). A lane holds pairs of
// adjacent columns (c, c + 1): where the rows are 8-byte aligned (N even) a pair is loaded and stored as
// float2, else each element goes through gemm_store. The bias and residual pairs of 16 rows are all
// loaded before any is used: one memory round trip per 16 rows instead of one per pair (ncu: a
// quarter of a batch-1 GEMM's stall samples waited on these loads one by one). ACT: the activation
// (see conv_tc); split-K partials (S > 1) stored as they are.
template <int WM, int WN, int ACT>
__device__ __forceinline__ void tc_gemm_epilogue(const float (&acc)[WM / 16][WN / 8][4], int r0, int c0,
                                                 const GemmBlock& g, int M, int N, int S, float* __restrict__ ws,
                                                 const float* __restrict__ bias, int sbm, int sbn, float alpha,
                                                 float beta, const float* __restrict__ res, float* __restrict__ Cm,
                                                 int lane) {
  const bool part = S > 1;
  float* __restrict__ out = part ? ws + (long long)g.split * M * N : Cm + g.cofs;
  const float* __restrict__ rs = part || !res ? nullptr : res + g.cofs;
  const float* __restrict__ bs = part ? nullptr : bias;
  const bool pairs = (N & 1) == 0 && ((unsigned long long)out & 7) == 0 && (!rs || ((unsigned long long)rs & 7) == 0);
  const bool bpairs = pairs && sbn == 1 && bs && ((unsigned long long)bs & 7) == 0 && (sbm & 1) == 0;
  if (!pairs) {          // N odd or unaligned rows: element by element, c + 1 may be past N
    tc_each<WM, WN>(acc, r0, c0, M, N, lane, [&](float a, int r, int c) {
      gemm_store(a, r, c, g, M, N, S, ws, bias, sbm, sbn, alpha, beta, res, Cm, ACT);
    });
    return;
  }
  const int cl = c0 + 2 * (lane & 3);
#pragma unroll
  for (int i = 0; i < WM / 16; ++i) {
    float2 bq[2][WN / 8], rq[2][WN / 8];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + i * 16 + (lane >> 2) + h * 8;
#pragma unroll
      for (int j = 0; j < WN / 8; ++j) {
        const int c = cl + j * 8;
        const bool in = r < M && c < N;     // N even, c even: c + 1 < N too
        const float* brow = bs + (long long)r * sbm;
        const float2 q = !in || !bs ? make_float2(0.f, 0.f) : bpairs ? *reinterpret_cast<const float2*>(brow + c)
                       : make_float2(brow[(long long)c * sbn], brow[(long long)(c + 1) * sbn]);
        bq[h][j] = bs ? make_float2(beta * q.x, beta * q.y) : q;   // no bias: beta plays no part (ONNX)
        rq[h][j] = in && rs ? *reinterpret_cast<const float2*>(rs + (long long)r * N + c) : make_float2(0.f, 0.f);
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = r0 + i * 16 + (lane >> 2) + h * 8;
      if (r >= M) continue;
      float* __restrict__ orow = out + (long long)r * N;
#pragma unroll
      for (int j = 0; j < WN / 8; ++j) {
        const int c = cl + j * 8;
        if (c >= N) continue;
        float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
        if (!part) {
          v0 = epilogue_act(ACT, alpha * v0 + bq[h][j].x + rq[h][j].x);
          v1 = epilogue_act(ACT, alpha * v1 + bq[h][j].y + rq[h][j].y);
        }
        *reinterpret_cast<float2*>(orow + c) = make_float2(v0, v1);
      }
    }
  }
}

// Batched GEMM on tensor cores, arguments and epilogue as gemm(); AH / BH: that operand is fp16 in
// device memory (a weight), else fp32 (an activation, rounded to fp16 on its way to shared memory).
template <bool H> struct TcType { using type = float; };
template <> struct TcType<true> { using type = unsigned short; };

template <int BM, int BN, int BK, int WM, int WN, int KS, bool AH, bool BH, int ACT>
__device__ void gemm_tc(const void* __restrict__ A, const void* __restrict__ B, const float* __restrict__ bias,
                        const float* __restrict__ res, float* __restrict__ Cm, int M, int N, int K, int sAm, int sAk,
                        int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, float alpha,
                        float beta, int relu, int S, float* __restrict__ ws) {
  using TA = typename TcType<AH>::type;
  using TB = typename TcType<BH>::type;
  constexpr int WX = BN / WN, NTS = (BM / WM) * WX * 32, NT = NTS * KS, LD = BK + 8;
  constexpr int ST = tc_stages((BM * (int)sizeof(TA) + BN * (int)sizeof(TB)) * LD);
  static_assert(sizeof(TA) * ST * BM * LD >= (KS - 1) * BM * BN * sizeof(float), "k-slice sums");
  __shared__ __align__(16) TA As[ST][BM][LD];
  __shared__ __align__(16) TB Bs[ST][BN][LD];
  const GemmBlock g = gemm_block<BM, BN, BK>(M, N, K, S, nb1, sA0, sA1, sB0, sB1);
  const long long aofs = g.aofs, bofs = g.bofs;
  const int m0 = g.m0, n0 = g.n0, ke = g.ke;
  const int tid = threadIdx.x, lane = tid & 31, warp = (tid % NTS) >> 5, ks = tid / NTS;
  const int wm0 = (warp / WX) * WM, wn0 = (warp % WX) * WN;
  float acc[WM / 16][WN / 8][4] = {};
  // 16-byte copies where an operand is k-contiguous with 16-byte aligned rows (8 halves, 4 floats)
  constexpr int VA = AH ? 7 : 3, VB = BH ? 7 : 3;
  const bool vecA = sAk == 1 && (K & VA) == 0 && (sAm & VA) == 0 && (aofs & VA) == 0 && ((unsigned long long)A & 15) == 0;
  const bool vecB = sBk == 1 && (K & VB) == 0 && (sBn & VB) == 0 && (bofs & VB) == 0 && ((unsigned long long)B & 15) == 0;
  pipelined<BK, ST>(g.kb, ke, [&](int st, int k0) {
    tc_fill<BM, BK, NT>(As[st], A, aofs, m0, M, sAm, sAk, k0, ke, vecA, tid);
    tc_fill<BN, BK, NT>(Bs[st], B, bofs, n0, N, sBn, sBk, k0, ke, vecB, tid);
  }, [&](int st) { tc_step<BK / KS, WM, WN>(As[st], Bs[st], acc, wm0, wn0, ks * (BK / KS), lane); });
  if (!tc_slices_sum<KS, NTS, WM / 16 * WN / 8 * 4>(&acc[0][0][0], As, tid)) return;
  tc_gemm_epilogue<WM, WN, ACT>(acc, m0 + wm0, n0 + wn0, g, M, N, S, ws, bias, sbm, sbn, alpha, beta, res, Cm, lane);
}

// Issue the copies of a ROWS x 64 slice of B (rows r0.., k from k0; element (r, k) at ofs + r * sR + k * sK,
// fp16) into a 1024-byte aligned shared tile in wgmma's 128-byte swizzle (see WG_SOURCE): eight threads
// copy one row's eight 16-byte chunks (one 128-byte global segment, one full shared row: no bank
// conflict). 16-byte cp.async when ``vec`` (k-contiguous, 16-byte aligned rows), else the 8 halves
// are gathered and stored at once; zeros past R rows or at k >= ke.
template <int ROWS, int NT>
__device__ __forceinline__ void wg_fill_b(unsigned short* s, const void* p, long long ofs, int r0, int R, int sR,
                                          int sK, int k0, int ke, bool vec, int tid) {
  static_assert(ROWS * 8 % NT == 0, "whole rounds of 16-byte chunks");
  const unsigned short* __restrict__ h = static_cast<const unsigned short*>(p);
#pragma unroll
  for (int t = 0; t < ROWS * 8 / NT; ++t) {
    const int e = tid + t * NT, row = e >> 3, c = e & 7, k = k0 + 8 * c;
    const bool ok = r0 + row < R && k < ke;
    unsigned short* dst = s + row * 64 + ((c ^ (row & 7)) << 3);
    const long long rowat = ofs + (long long)(r0 + row) * sR;
    if (vec) cp_async16(dst, ok ? h + rowat + k : h, ok);
    else *reinterpret_cast<uint4*>(dst) = ok ? tc_gather8<true>(p, rowat + (long long)k * sK, sK, ke - k)
                                             : make_uint4(0u, 0u, 0u, 0u);
  }
}

#ifdef RTX_EMULATOR
#define RTX_WG_SHARED(name, bytes) __shared__ __align__(1024) unsigned char name[bytes]
#else
#define RTX_WG_SHARED(name, bytes) extern __shared__ __align__(16) unsigned char name[]
#endif

// Batched GEMM on Hopper's warpgroup MMA (sm_90a), arguments and epilogue as gemm_tc: BM / 64
// warpgroups stacked over rows, each multiplying its 64 rows by the block's BN columns (one wgmma
// per 16 k, B from the swizzled shared tile, A from registers: each warp's fragments built from the
// fp32 or fp16 A tile as gemm_tc builds them). Tile (BM, BN, 64, 16, BN, 1): the warp tile is 16 x BN.
// B must be fp16 (a weight). The cp.async pipeline runs in dynamic shared memory (the launch passes
// wg_smem_bytes), up to 4 stages.
template <int BM, int BN, int BK, int WM, int WN, int KS, bool AH, bool BH, int ACT>
__device__ void gemm_wg(const void* __restrict__ A, const void* __restrict__ B, const float* __restrict__ bias,
                        const float* __restrict__ res, float* __restrict__ Cm, int M, int N, int K, int sAm, int sAk,
                        int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, float alpha,
                        float beta, int relu, int S, float* __restrict__ ws) {
  static_assert(BK == 64 && WM == 16 && WN == BN && KS == 1 && BH && BM % 64 == 0, "a gemm_wg tile");
  using TA = typename TcType<AH>::type;
  constexpr int NT = BM / 16 * 32, LA = BK + 8, BBYTES = BN * BK * 2, ABYTES = BM * LA * (int)sizeof(TA);
  constexpr int ST = tc_stages(BBYTES + ABYTES, RTX_WG_SMEM - 1024);   // 1 KB: the alignment slack
  static_assert(ST >= 2 && BBYTES % 1024 == 0, "the stages fit, B tiles stay 1024-byte aligned");
  RTX_WG_SHARED(raw, ST * (BBYTES + ABYTES) + 1024);
  unsigned char* sm = raw + ((1024u - (smem_u32(raw) & 1023u)) & 1023u);
  // stage s: its B tile at s * BBYTES, its A tile after the ST B tiles
  const auto Bs = [&](int st) { return reinterpret_cast<unsigned short*>(sm + st * BBYTES); };
  const auto As = [&](int st) { return reinterpret_cast<TA (*)[LA]>(sm + ST * BBYTES + st * ABYTES); };
  const GemmBlock g = gemm_block<BM, BN, BK>(M, N, K, S, nb1, sA0, sA1, sB0, sB1);
  const long long aofs = g.aofs, bofs = g.bofs;
  const int m0 = g.m0, n0 = g.n0, ke = g.ke;
  const int tid = threadIdx.x, lane = tid & 31, wrow = (tid >> 5) * 16;
  float acc[1][BN / 8][4] = {};
  constexpr int VA = AH ? 7 : 3;
  const bool vecA = sAk == 1 && (K & VA) == 0 && (sAm & VA) == 0 && (aofs & VA) == 0 && ((unsigned long long)A & 15) == 0;
  const bool vecB = sBk == 1 && (K & 7) == 0 && (sBn & 7) == 0 && (bofs & 7) == 0 && ((unsigned long long)B & 15) == 0;
  pipelined<BK, ST, true>(g.kb, ke, [&](int st, int k0) {
    tc_fill<BM, BK, NT>(As(st), A, aofs, m0, M, sAm, sAk, k0, ke, vecA, tid);
    wg_fill_b<BN, NT>(Bs(st), B, bofs, n0, N, sBn, sBk, k0, ke, vecB, tid);
  }, [&](int st) {
    unsigned a[BK / 16][4];
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) tc_frag_a(a[kk], As(st), wrow, kk * 16, lane);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) wg_mma<BN>(acc[0], a[kk], Bs(st), kk);
    wgmma_commit();
    wgmma_wait0();   // the stage is refilled after the next barrier
  });
  tc_gemm_epilogue<16, BN, ACT>(acc, m0 + wrow, n0, g, M, N, S, ws, bias, sbm, sbn, alpha, beta, res, Cm, lane);
}

// Fused attention on tensor cores (flash attention): O = softmax(scale * Q Kt + mask) V for a block of
// 64 queries (16 per warp) of batch b = b0 * nb1 + b1; keys and values stream through shared memory
// in blocks of 64 and the softmax runs online (a running max and sum per row, the partial output
// rescaled when the max grows), so the score matrix never reaches memory. Element strides:
// Q (b0, b1, m, d), Kt (b0, b1, d, n), V (b0, b1, n, d), mask (b0, b1, m, n), O (b0, b1, m, d) (so the
// exporters' head transposes around attention are read and written in place, not copied). The
// head sizes D (Q, K) and DV (V) are at most DP. ``guard``: a row with no finite score gives zeros
// (an exporter's IsNaN -> Where after the softmax), else NaN as softmax does.
//
// PART (attn_tc_part): blockIdx.z takes keys [kv0, kv1), one of ``nsplit`` chunks, and writes its
// unnormalized output, row max (log2 units) and row sum to ws[((b * nsplit + z) * Sq + m) * (DP + 2) + ...] for
// attn_combine: more blocks when few query tiles would leave most SMs idle (BERT, ViT, Whisper at batch 1).
#define RTX_LOG2E 1.4426950408889634f
template <int DP, bool PART>
__device__ __forceinline__ void attn_tc_impl(const float* __restrict__ q, const float* __restrict__ kt,
                                             const float* __restrict__ v, const float* __restrict__ mask,
                                             float* __restrict__ o, int Sq, int Skv, int D, int DV, int nb1, int sQ0,
                                             int sQ1, int sQm, int sQd, int sK0, int sK1, int sKd, int sKn, int sV0,
                                             int sV1, int sVn, int sVd, int sM0, int sM1, int sMm, int sMn, int sO0,
                                             int sO1, int sOm, int sOd, float scale, int guard, int nsplit,
                                             float* __restrict__ ws) {
  constexpr int BQ = 64, BKV = 64, NT = 128, LD = DP + 8;
  static_assert(DP % 16 == 0 && DP <= 128, "head size: a multiple of 16 up to 128");
  __shared__ __align__(16) unsigned short Ks[BKV][LD];   // the query tile first, then each key block (n x d)
  __shared__ __align__(16) unsigned short Vs[BKV][LD];   // each value block (n x d)
  const int b = blockIdx.y, b0 = b / nb1, b1 = b - b0 * nb1;
  const long long qo = (long long)b0 * sQ0 + (long long)b1 * sQ1, ko = (long long)b0 * sK0 + (long long)b1 * sK1;
  const long long vo = (long long)b0 * sV0 + (long long)b1 * sV1, mo = (long long)b0 * sM0 + (long long)b1 * sM1;
  const int m0 = blockIdx.x * BQ, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const bool vq = sQd == 1 && (D & 7) == 0 && (sQm & 7) == 0 && (qo & 7) == 0;
  const bool vk = sKd == 1 && (D & 7) == 0 && (sKn & 7) == 0 && (ko & 7) == 0;
  const bool vv = sVd == 1 && (DV & 7) == 0 && (sVn & 7) == 0 && (vo & 7) == 0;
  unsigned qa[DP / 16][4];
  {
    uint4 r[BQ * DP / 8 / NT];
    tc_stage<BQ, DP, NT, false>(r, q, qo, m0, Sq, sQm, sQd, 0, D, vq, tid);
    tc_unstage<BQ, DP, NT>(r, Ks, tid);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk) ldmatrix_x4(qa[kk], &Ks[warp * 16 + (lane & 15)][kk * 16 + (lane >> 4) * 8]);
    __syncthreads();
  }
  float oacc[DP / 8][4] = {};
  float mrow[2] = {RTX_NEG_INF, RTX_NEG_INF}, lrow[2] = {0.f, 0.f};   // lrow: this lane's share of the row sum
  const float sl2 = scale * RTX_LOG2E;
  int kv0 = 0, kv1 = Skv;
  if (PART) {
    const int chunk = (((Skv + nsplit - 1) / nsplit + BKV - 1) / BKV) * BKV;
    kv0 = blockIdx.z * chunk;
    kv1 = min(Skv, kv0 + chunk);
  }
  for (int n0 = kv0; n0 < kv1; n0 += BKV) {
    {
      uint4 rk[BKV * DP / 8 / NT], rv[BKV * DP / 8 / NT];
      tc_stage<BKV, DP, NT, false>(rk, kt, ko, n0, kv1, sKn, sKd, 0, D, vk, tid);
      tc_stage<BKV, DP, NT, false>(rv, v, vo, n0, kv1, sVn, sVd, 0, DV, vv, tid);
      tc_unstage<BKV, DP, NT>(rk, Ks, tid);
      tc_unstage<BKV, DP, NT>(rv, Vs, tid);
    }
    __syncthreads();
    float s[BKV / 8][4] = {};
#pragma unroll
    for (int kk = 0; kk < DP / 16; ++kk)
#pragma unroll
      for (int j = 0; j < BKV / 8; ++j) {
        unsigned bf[2];
        ldmatrix_x2(bf, &Ks[j * 8 + (lane & 7)][kk * 16 + ((lane >> 3) & 1) * 8]);
        mma_m16n8k16_f16f32(s[j], qa[kk], bf, s[j]);
      }
    // scores in log2 units (scale and mask times log2(e)): exp2f is one MUFU.EX2, expf a dozen instructions
    float mx[2] = {RTX_NEG_INF, RTX_NEG_INF};
    if (!mask && n0 + BKV <= kv1) {      // a whole key block, no mask: no per-score checks
#pragma unroll
      for (int j = 0; j < BKV / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[j][e] *= sl2;
          mx[e >> 1] = fmaxf(mx[e >> 1], s[j][e]);
        }
    } else {
#pragma unroll
      for (int j = 0; j < BKV / 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int r = m0 + warp * 16 + (lane >> 2) + (e >> 1) * 8, c = n0 + j * 8 + 2 * (lane & 3) + (e & 1);
          float val = RTX_NEG_INF;
          if (c < kv1) {
            // a finite mask stays finite in log2 units (HF's finfo.min * log2(e) would overflow to -inf and
            // turn a fully masked row's uniform softmax into NaN); -inf stays -inf
            const float mk = mask && r < Sq ? mask[mo + (long long)r * sMm + (long long)c * sMn] : 0.f;
            val = s[j][e] * sl2 + (mk == RTX_NEG_INF ? mk : fmaxf(mk * RTX_LOG2E, -3.402823466e38f));
          }
          s[j][e] = val;
          mx[e >> 1] = fmaxf(mx[e >> 1], val);
        }
    }
    float corr[2], base[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
      const float mnew = fmaxf(mrow[h], mx[h]);
      base[h] = mnew == RTX_NEG_INF ? 0.f : mnew;     // no finite score yet: exp(-inf - 0) = 0
      corr[h] = exp2f(mrow[h] - base[h]);
      mrow[h] = mnew;
      lrow[h] *= corr[h];
    }
#pragma unroll
    for (int j = 0; j < BKV / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[j][e] = exp2f(s[j][e] - base[e >> 1]);
        lrow[e >> 1] += s[j][e];
      }
#pragma unroll
    for (int jd = 0; jd < DP / 8; ++jd)
#pragma unroll
      for (int e = 0; e < 4; ++e) oacc[jd][e] *= corr[e >> 1];
#pragma unroll
    for (int kk = 0; kk < BKV / 16; ++kk) {
      // the C fragments of two 16x8 score tiles are the A fragment of one 16x16 slice of P
      const unsigned pa[4] = {pack_h2(f2h(s[2 * kk][0]), f2h(s[2 * kk][1])), pack_h2(f2h(s[2 * kk][2]), f2h(s[2 * kk][3])),
                              pack_h2(f2h(s[2 * kk + 1][0]), f2h(s[2 * kk + 1][1])),
                              pack_h2(f2h(s[2 * kk + 1][2]), f2h(s[2 * kk + 1][3]))};
#pragma unroll
      for (int jd = 0; jd < DP / 8; ++jd) {
        unsigned bf[2];
        ldmatrix_x2_trans(bf, &Vs[kk * 16 + (lane & 15)][jd * 8]);
        mma_m16n8k16_f16f32(oacc[jd], pa, bf, oacc[jd]);
      }
    }
    __syncthreads();   // every warp is done with this key / value block before the next is stored
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 1);
    lrow[h] += __shfl_xor_sync(0xffffffffu, lrow[h], 2);
  }
  if (PART) {
    float* __restrict__ wb = ws + ((long long)b * nsplit + blockIdx.z) * Sq * (DP + 2);
#pragma unroll
    for (int jd = 0; jd < DP / 8; ++jd)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = m0 + warp * 16 + (lane >> 2) + (e >> 1) * 8, d = jd * 8 + 2 * (lane & 3) + (e & 1);
        if (r < Sq && d < DV) wb[(long long)r * (DP + 2) + d] = oacc[jd][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = m0 + warp * 16 + (lane >> 2) + h * 8;
      if ((lane & 3) == 0 && r < Sq) {
        wb[(long long)r * (DP + 2) + DP] = mrow[h];
        wb[(long long)r * (DP + 2) + DP + 1] = lrow[h];
      }
    }
    return;
  }
  float* __restrict__ ob = o + (long long)b0 * sO0 + (long long)b1 * sO1;
#pragma unroll
  for (int jd = 0; jd < DP / 8; ++jd)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int r = m0 + warp * 16 + (lane >> 2) + (e >> 1) * 8, d = jd * 8 + 2 * (lane & 3) + (e & 1);
      const float l = lrow[e >> 1];
      if (r < Sq && d < DV) ob[(long long)r * sOm + (long long)d * sOd] = l > 0.f ? oacc[jd][e] / l : guard ? 0.f : __int_as_float(0x7fc00000);
    }
}

#define RTX_ATTN_ARGS                                                                                     \
  const float* __restrict__ q, const float* __restrict__ kt, const float* __restrict__ v,                 \
      const float* __restrict__ mask, float* __restrict__ o, int Sq, int Skv, int D, int DV, int nb1, int sQ0, \
      int sQ1, int sQm, int sQd, int sK0, int sK1, int sKd, int sKn, int sV0, int sV1, int sVn, int sVd, int sM0, \
      int sM1, int sMm, int sMn, int sO0, int sO1, int sOm, int sOd, float scale, int guard
#define RTX_ATTN_PASS                                                                                     \
  q, kt, v, mask, o, Sq, Skv, D, DV, nb1, sQ0, sQ1, sQm, sQd, sK0, sK1, sKd, sKn, sV0, sV1, sVn, sVd, sM0, sM1, \
      sMm, sMn, sO0, sO1, sOm, sOd, scale, guard
template <int DP>
__device__ void attn_tc(RTX_ATTN_ARGS) {
  attn_tc_impl<DP, false>(RTX_ATTN_PASS, 1, nullptr);
}
template <int DP>
__device__ void attn_tc_part(RTX_ATTN_ARGS, int nsplit, float* __restrict__ ws) {
  attn_tc_impl<DP, true>(RTX_ATTN_PASS, nsplit, ws);
}
#undef RTX_ATTN_ARGS
#undef RTX_ATTN_PASS

// The ``nsplit`` partial results of attn_tc_part merged (each rescaled to the largest row max) and
// written through O's strides; a row no split saw a finite score in: zeros with ``guard``, else NaN.
template <int DP>
__device__ void attn_combine(const float* __restrict__ ws, float* __restrict__ o, int Sq, int DV, int nb, int nb1,
                             int nsplit, int sO0, int sO1, int sOm, int sOd, int guard) {
  const long long n = (long long)nb * Sq * DV;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const int d = (int)(i % DV);
    const long long br = i / DV;
    const int r = (int)(br % Sq), b = (int)(br / Sq), b0 = b / nb1, b1 = b - b0 * nb1;
    float mx = RTX_NEG_INF;
    for (int z = 0; z < nsplit; ++z) mx = fmaxf(mx, ws[(((long long)b * nsplit + z) * Sq + r) * (DP + 2) + DP]);
    float l = 0.f, acc = 0.f;
    if (mx != RTX_NEG_INF) {
      for (int z = 0; z < nsplit; ++z) {
        const float* row = ws + (((long long)b * nsplit + z) * Sq + r) * (DP + 2);
        const float w = row[DP] == RTX_NEG_INF ? 0.f : exp2f(row[DP] - mx);   // row maxima in log2 units
        l += w * row[DP + 1];
        acc += w * row[d];
      }
    }
    o[(long long)b0 * sO0 + (long long)b1 * sO1 + (long long)r * sOm + (long long)d * sOd] =
        l > 0.f ? acc / l : guard ? 0.f : __int_as_float(0x7fc00000);
  }
}
"""

_CONV = ("const float* x, const unsigned short* w, const float* bias, const float* res, float* y, int N, int C, "
         "int H, int W, int OC, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, "
         "int G, int relu, int S, float* ws, const int4* ktab")
TC_FAMILIES: dict[str, str] = {
    "conv_tc": _CONV,
    "gemm_tc": ("const void* A, const void* B, const float* bias, const float* res, float* Cm, int M, int N, int K, "
                "int sAm, int sAk, int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, "
                "float alpha, float beta, int relu, int S, float* ws"),
    "attn_tc": ("const float* q, const float* kt, const float* v, const float* mask, float* o, int Sq, int Skv, "
                "int D, int DV, int nb1, int sQ0, int sQ1, int sQm, int sQd, int sK0, int sK1, int sKd, int sKn, "
                "int sV0, int sV1, int sVn, int sVd, int sM0, int sM1, int sMm, int sMn, int sO0, int sO1, int sOm, "
                "int sOd, float scale, int guard"),
}
TC_FAMILIES["attn_tc_part"] = TC_FAMILIES["attn_tc"] + ", int nsplit, float* ws"
TC_FAMILIES["attn_combine"] = ("const float* ws, float* o, int Sq, int DV, int nb, int nb1, int nsplit, int sO0, "
                               "int sO1, int sOm, int sOd, int guard")
TC_FAMILIES["gemm_wg"] = TC_FAMILIES["gemm_tc"]
TC_TEMPLATE_KINDS: dict[str, str] = {"conv_tc": "iiiiiibi", "gemm_tc": "iiiiiibbi", "gemm_wg": "iiiiiibbi",
                                     "attn_tc": "i", "attn_tc_part": "i",
                                     "attn_combine": "i"}

#: tensor-core block tiles (BM, BN, BK, WM, WN, KS): 4 warps per k slice (KS x 128 threads); BM over
#: output channels (conv) / rows (gemm), BN over output pixels / columns. The tuner times them per layer.
TC_TILES: dict[str, tuple[int, int, int, int, int, int]] = {
    "t128x64": (128, 64, 32, 64, 32, 1),
    "t64x64": (64, 64, 32, 32, 32, 1),
    "t64x32": (64, 32, 32, 32, 16, 1),
    "t32x32": (32, 32, 32, 16, 16, 1),
    # k 64 deep: half the k steps (barriers, load round trips) where few blocks per SM hide little latency
    "t64x64k64": (64, 64, 64, 32, 32, 1),
    "t64x32k64": (64, 32, 64, 32, 16, 1),
    "t32x32k64": (32, 32, 64, 16, 16, 1),
    # k slices: 2 or 4 groups of warps share the tile, each multiplies its part of every stage (batch 1:
    # long k on few tiles, where split-K would need a reduce launch)
    "t64x32k64s2": (64, 32, 64, 32, 16, 2),
    "t32x32k64s2": (32, 32, 64, 16, 16, 2),
    "t32x32k64s4": (32, 32, 64, 16, 16, 4),
}


#: Hopper warpgroup-MMA tiles of gemm_wg (BM, BN, 64, 16, BN, 1): BM / 64 warpgroups over rows; sm_90a only
#: (the runtime plans them only where the plan's kernels were compiled for it, and there the heuristic
#: picks among them: biggest first, as lowering._tile_candidates expects).
WG_TILES: dict[str, tuple[int, int, int, int, int, int]] = {
    "w128x128": (128, 128, 64, 16, 128, 1),
    "w128x64": (128, 64, 64, 16, 64, 1),
    "w64x128": (64, 128, 64, 16, 128, 1),
    "w64x64": (64, 64, 64, 16, 64, 1),
}
#: the families that need sm_90a (wgmma)
WG_FAMILIES = frozenset({"gemm_wg"})


def wg_smem_bytes(targs: tuple[int, ...]) -> int:
    """Dynamic shared memory of a gemm_wg launch (the kernel's stage count): B tiles fp16 [BN][64],
    A tiles [BM][72] of fp16 (AH) or fp32, as many stages as fit WG_SMEM_LIMIT (at most MAX_STAGES),
    and 1 KB to align the swizzled tiles."""
    bm, bn, bk = targs[:3]
    stage = bn * bk * 2 + bm * (bk + 8) * (2 if targs[6] else 4)
    return stages_in(stage, WG_SMEM_LIMIT - 1024) * stage + 1024


def stages_in(stage: int, limit: int = SMEM_LIMIT) -> int:
    """Pipeline stages of ``stage`` bytes each that fit ``limit`` (at most MAX_STAGES): the kernels' tc_stages."""
    return min(MAX_STAGES, limit // stage)


def tc_stages(family: str, targs: tuple[int, ...]) -> int:
    """Pipeline stages of a tensor-core conv / GEMM (the kernels' ``tc_stages``): fp16 operands take 2
    bytes an element in shared memory, fp32 ones 4; under 2 the tile does not fit these operands."""
    bm, bn, bk = targs[:3]
    if family == "conv_tc":
        stage = bm * (bk + 8) * 2 + bk * (bn + 4) * 4
    else:
        stage = (bm * (2 if targs[6] else 4) + bn * (2 if targs[7] else 4)) * (bk + 8)
    return stages_in(stage)


def tc_tiles(family: str, suffix: tuple[int, ...]) -> dict[str, tuple[int, int, int, int, int, int]]:
    """The tiles of TC_TILES whose pipeline fits in shared memory for ``family`` with this suffix."""
    return {k: t for k, t in TC_TILES.items() if tc_stages(family, t + suffix) >= 2}

#: head sizes (rounded up to 16) of the fused attention kernel; bigger heads run unfused
ATTN_DPS = (32, 64, 128)


def tc_block_threads(family: str, targs: tuple[int, ...]) -> int:
    if len(targs) == 1:          # attn_tc / attn_tc_part<DP>: 4 warps of 16 query rows; attn_combine
        return 128
    bm, bn, _, wm, wn = targs[:5]
    # KS follows the tile; a plan built before k slices has none there (one slice: two template arguments
    # fewer), one built before the activation was a template argument (ACT, the last) one fewer
    ks = targs[5] if len(targs) >= len(TC_TEMPLATE_KINDS[family]) - 1 else 1
    return (bm // wm) * (bn // wn) * 32 * ks
