"""cuda_shim.h and the backend's tensor-core helpers (kernels_tc.MMA_SOURCE) on their own: warp collectives, barriers, atomics, half, the
tensor-core helpers (fragment layouts against numpy, two independent ways), wmma, errors.

Kernels in ``PORTABLE`` are plain CUDA: the ``backend`` fixture runs them on the emulator and,
where there is a GPU (marker ``gpu``), on GPU 0 through NVRTC, against the same numpy
expectations - so the emulator's semantics are checked against the hardware, not only against
what this file believes CUDA does.
"""
from __future__ import annotations

import numpy as np
import pytest

from cudaemu import EmuError, compile_source, compiler, mma_device_source
from nvrtc_helpers import local_cc

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to compile kernels for the CPU")

# ---------------------------------------------------------------------------------------------- kernels
PORTABLE = r"""
extern "C" __global__ void warp_ops(int* out) {
  const int tid = threadIdx.x, lane = tid & 31;
  int* o = out + (blockIdx.x * blockDim.x + tid) * 16;
  const int v = tid * 10 + blockIdx.x * 1000;
  o[0] = __shfl_xor_sync(0xffffffffu, v, 5);
  o[1] = __shfl_sync(0xffffffffu, v, 7);
  o[2] = __shfl_up_sync(0xffffffffu, v, 3);
  o[3] = __shfl_down_sync(0xffffffffu, v, 3);
  o[4] = __shfl_sync(0xffffffffu, v, lane + 3, 8);
  o[5] = __shfl_xor_sync(0xffffffffu, v, 9, 16);
  o[6] = __shfl_up_sync(0xffffffffu, v, 2, 16);
  o[7] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  o[8] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
  o[9] = __any_sync(0xffffffffu, lane == 31 && blockIdx.x == 1);
  o[10] = __all_sync(0xffffffffu, tid < 48);
  o[11] = (int)(2.0f * __shfl_xor_sync(0xffffffffu, 0.5f * tid, 1));
  const long long L = ((long long)v << 33) | lane;
  const long long r = __shfl_sync(0xffffffffu, L, 31 - lane);
  o[12] = (int)(r >> 33);
  o[13] = (int)(r & 0xffffffffLL);
  o[14] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : -1;
  o[15] = (int)(4.0 * __shfl_down_sync(0xffffffffu, (double)v + 0.25, 1));
}

// blockDim (16, 6): 96 threads, 3 warps, linearized x first; one row of 96 values per block
extern "C" __global__ void block_ops(const float* x, float* sums, int* lane0, int* counters, float* fsum) {
  __shared__ float s[96];
  const int lin = threadIdx.y * blockDim.x + threadIdx.x;
  const float v = x[blockIdx.x * 96 + lin];
  s[lin] = v;
  __syncthreads();
  for (int n = 96; n > 3; n /= 2) {
    if (lin < n / 2) s[lin] += s[lin + n / 2];
    __syncthreads();
  }
  if (lin == 0) sums[blockIdx.x] = s[0] + s[1] + s[2];
  lane0[blockIdx.x * 96 + lin] = __shfl_sync(0xffffffffu, lin, 0);
  atomicAdd(&counters[0], 1);
  atomicMax(&counters[1], (int)blockIdx.x * 1000 + lin);
  atomicAdd(fsum, v);
}

// one 16x8x16 product per warp: A row-major 16x16, B row-major 16x8 (k x n), C/D row-major 16x8.
// Fragments loaded element by element with the PTX ISA formulas (section "Matrix Fragments for
// mma.m16n8k16 with floating point type"), groupID g = lane >> 2, threadID_in_group t = lane % 4.
extern "C" __global__ void mma_documented(const unsigned short* A, const unsigned short* B, const float* C, float* D) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  A += warp * 256; B += warp * 128; C += warp * 128; D += warp * 128;
  unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4], d[4];
  for (int i = 0; i < 8; ++i) {       // row = groupID for ai where 0 <= i < 2 || 4 <= i < 6, else groupID + 8
    const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
    const int col = (t * 2) + (i & 1) + (i >= 4 ? 8 : 0);
    a[i / 2] |= (unsigned)A[row * 16 + col] << (16 * (i & 1));
  }
  for (int i = 0; i < 4; ++i) {       // row = (threadID_in_group * 2) + (i & 0x1) (+ 8 for i >= 2), col = groupID
    const int row = (t * 2) + (i & 1) + (i >= 2 ? 8 : 0);
    b[i / 2] |= (unsigned)B[row * 8 + g] << (16 * (i & 1));
  }
  for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
  mma_m16n8k16_f16f32(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}

// The same product with the fragments from ldmatrix (another section of the PTX ISA, another
// implementation in the emulator): A with .x4 from a row-major shared tile, B twice - .x2.trans
// from the k x n tile (D1) and .x2 from its n x k transpose (D2).
extern "C" __global__ void mma_ldmatrix(const unsigned short* A, const unsigned short* B, const float* C, float* D1,
                                        float* D2) {
  __shared__ __align__(16) unsigned short As[2][16][16];
  __shared__ __align__(16) unsigned short Bs[2][16][8];
  __shared__ __align__(16) unsigned short Bt[2][8][16];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  A += warp * 256; B += warp * 128; C += warp * 128; D1 += warp * 128; D2 += warp * 128;
  for (int e = lane; e < 256; e += 32) As[warp][e / 16][e % 16] = A[e];
  for (int e = lane; e < 128; e += 32) {
    Bs[warp][e / 8][e % 8] = B[e];
    Bt[warp][e % 8][e / 8] = B[e];
  }
  __syncthreads();
  unsigned a[4], b1[2], b2[2];
  ldmatrix_x4(a, &As[warp][lane % 16][(lane / 16) * 8]);
  ldmatrix_x2_trans(b1, &Bs[warp][lane % 16][0]);
  ldmatrix_x2(b2, &Bt[warp][lane % 8][(lane / 8) * 8]);
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
  mma_m16n8k16_f16f32(d, a, b1, c);
  for (int i = 0; i < 4; ++i) D1[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
  mma_m16n8k16_f16f32(d, a, b2, c);
  for (int i = 0; i < 4; ++i) D2[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}
"""

EMU_ONLY = r"""
#include <cuda_fp16.h>
#include <mma.h>
using namespace nvcuda;

extern "C" __global__ void float_atomics_and_half(const float* x, float* fmax_out, float* h) {
  const int i = threadIdx.x;
  atomicMax(fmax_out, x[i]);              // emulator extension (no float atomicMax in CUDA)
  const __half a = __float2half(x[i]), b = __float2half(0.1f);
  h[i * 4 + 0] = __half2float(a);
  h[i * 4 + 1] = __half2float(__hadd(a, b));
  h[i * 4 + 2] = __half2float(__hmul(a, b));
  h[i * 4 + 3] = __low2float(__hfma2(__halves2half2(a, b), __half2half2(b), __floats2half2_rn(1.f, 2.f)));
}

// lane 0 waits in a shuffle for lane 1, which waits at a barrier for lane 0: no progress possible
extern "C" __global__ void deadlock(int* out) {
  int v = threadIdx.x;
  if (threadIdx.x == 0) v = __shfl_sync(0xffffffffu, v, 1);
  else __syncthreads();
  out[threadIdx.x] = v;
}

extern "C" __global__ void traps(float* out, int which) {
  unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4] = {0, 0, 0, 0}, d[4];
  if (which == 0 && threadIdx.x == 5) __trap();
  if (which == 1 && threadIdx.x < 16) mma_m16n8k16_f16f32(d, a, b, c);   // half a warp: not allowed
  out[threadIdx.x] = 1.f;
}

// reads a neighbour's shared value, with or without the barrier that makes it safe
extern "C" __global__ void racy(float* out, int barrier) {
  __shared__ float s[64];
  s[threadIdx.x] = (float)(threadIdx.x + 100 * blockIdx.x);
  if (barrier) __syncthreads();
  out[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x];
}

// threads that have exited no longer count at a barrier (sm_70+ behaviour)
extern "C" __global__ void barrier_after_exit(float* out) {
  __shared__ float s[64];
  if (threadIdx.x >= 40) return;
  s[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  out[threadIdx.x] = s[39 - threadIdx.x];
}

template <class LA, class LB>
__device__ void wmma_tile(const __half* A, const __half* B, const float* C, float* D, wmma::layout_t lc,
                          wmma::layout_t ld) {
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, LA> a;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, LB> b;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
  wmma::load_matrix_sync(a, A, 16);
  wmma::load_matrix_sync(b, B, 16);
  wmma::load_matrix_sync(c, C, 16, lc);
  wmma::mma_sync(c, a, b, c);
  for (int i = 0; i < c.num_elements; ++i) c.x[i] *= 2.0f;
  wmma::store_matrix_sync(D, c, 16, ld);
}
extern "C" __global__ void wmma_test(const __half* A, const __half* B, const float* C, float* D, int mode) {
  if (mode == 0) wmma_tile<wmma::row_major, wmma::col_major>(A, B, C, D, wmma::mem_row_major, wmma::mem_row_major);
  if (mode == 1) wmma_tile<wmma::col_major, wmma::row_major>(A, B, C, D, wmma::mem_col_major, wmma::mem_row_major);
  if (mode == 2) wmma_tile<wmma::row_major, wmma::row_major>(A, B, C, D, wmma::mem_row_major, wmma::mem_col_major);
  if (mode == 3) wmma_tile<wmma::col_major, wmma::col_major>(A, B, C, D, wmma::mem_col_major, wmma::mem_col_major);
}
"""


def _portable_source() -> str:
    return mma_device_source() + PORTABLE


class _Emu:
    name = "emulator"

    def __init__(self) -> None:
        self.mod = compile_source(_portable_source())

    def run(self, entry, grid, block, *args) -> None:
        self.mod.run(entry, grid, block, *args)


@pytest.fixture(scope="module", params=["emulator", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    if request.param == "emulator":
        yield _Emu()
        return
    cc = local_cc()
    if cc is None:
        pytest.skip("needs an NVIDIA GPU with a driver")
    from cudaemu.gpu import GpuModule
    from rtxpack.backends.nvrtc.compile import cc_to_sm

    sm = cc_to_sm(cc)
    if sm < 80:
        pytest.skip(f"mma.m16n8k16 needs sm_80, this GPU is sm_{sm}")
    mod = GpuModule(_portable_source(), sm)
    mod.name = f"gpu sm_{sm}"
    yield mod
    mod.close()


@pytest.fixture(scope="module")
def emu_only():
    return compile_source(mma_device_source() + EMU_ONLY)


# ---------------------------------------------------------------------------------------------- expectations
def _src(lane: int, kind: str, arg: int, width: int = 32) -> int:
    """Source lane of a shuffle (CUDA programming guide, warp shuffle functions)."""
    base = lane & ~(width - 1)
    if kind == "idx":
        return base + (arg & (width - 1))
    if kind == "xor":
        s = lane ^ arg
        return lane if s >= base + width else s
    if kind == "up":
        return lane if lane - arg < base else lane - arg
    return lane if lane + arg >= base + width else lane + arg


def _expected_warp_ops(blocks: int, threads: int) -> np.ndarray:
    out = np.zeros((blocks, threads, 16), np.int64)
    for blk in range(blocks):
        for tid in range(threads):
            lane, w0 = tid & 31, tid & ~31

            def v(src_lane: int) -> int:
                return (w0 + src_lane) * 10 + blk * 1000

            o = out[blk, tid]
            o[0], o[1] = v(_src(lane, "xor", 5)), v(_src(lane, "idx", 7))
            o[2], o[3] = v(_src(lane, "up", 3)), v(_src(lane, "down", 3))
            o[4], o[5] = v(_src(lane, "idx", lane + 3, 8)), v(_src(lane, "xor", 9, 16))
            o[6], o[7] = v(_src(lane, "up", 2, 16)), v(_src(lane, "down", 2, 16))
            o[8] = sum(1 << i for i in range(32) if i % 3 == 0)
            o[9] = int(blk == 1)
            o[10] = int(all(w0 + i < 48 for i in range(32)))
            o[11] = w0 + (lane ^ 1)
            o[12], o[13] = v(31 - lane), 31 - lane
            o[14] = v(lane ^ 1) if lane < 16 else -1
            o[15] = 4 * v(_src(lane, "down", 1)) + 1
    return out


def _f16(*shape: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


# ---------------------------------------------------------------------------------------------- tests
def test_warp_collectives(backend) -> None:
    blocks, threads = 2, 64
    out = np.zeros(blocks * threads * 16, np.int32)
    backend.run("warp_ops", (blocks, 1, 1), (threads, 1, 1), out)
    got, want = out.reshape(blocks, threads, 16), _expected_warp_ops(blocks, threads)
    for j in range(16):
        np.testing.assert_array_equal(got[:, :, j], want[:, :, j], err_msg=f"{backend.name}: o[{j}]")


def test_barriers_shared_memory_and_atomics(backend) -> None:
    blocks = 5
    x = np.random.default_rng(3).standard_normal(blocks * 96).astype(np.float32)
    sums, lane0 = np.zeros(blocks, np.float32), np.zeros(blocks * 96, np.int32)
    counters, fsum = np.zeros(2, np.int32), np.zeros(1, np.float32)
    backend.run("block_ops", (blocks, 1, 1), (16, 6, 1), x, sums, lane0, counters, fsum)
    np.testing.assert_allclose(sums, x.reshape(blocks, 96).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(lane0.reshape(blocks, 96), np.tile(np.arange(96) & ~31, (blocks, 1)))
    assert counters.tolist() == [blocks * 96, (blocks - 1) * 1000 + 95]
    np.testing.assert_allclose(fsum[0], x.sum(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("warps", [1, 2])
def test_mma_m16n8k16_fragments_documented_layout(backend, warps: int) -> None:
    A, B = _f16(warps, 16, 16, seed=1), _f16(warps, 16, 8, seed=2)
    C = np.random.default_rng(4).standard_normal((warps, 16, 8)).astype(np.float32)
    D = np.zeros_like(C)
    backend.run("mma_documented", (1, 1, 1), (32 * warps, 1, 1), A.view(np.uint16), B.view(np.uint16), C, D)
    ref = np.einsum("wmk,wkn->wmn", A.astype(np.float64), B.astype(np.float64)) + C
    np.testing.assert_allclose(D, ref, rtol=1e-5, atol=1e-5, err_msg=backend.name)


def test_mma_fragments_from_ldmatrix(backend) -> None:
    """ldmatrix .x4 / .x2 / .x2.trans feed the mma: agreeing with numpy ties the two layouts."""
    A, B = _f16(2, 16, 16, seed=5), _f16(2, 16, 8, seed=6)
    C = np.random.default_rng(7).standard_normal((2, 16, 8)).astype(np.float32)
    D1, D2 = np.zeros_like(C), np.zeros_like(C)
    backend.run("mma_ldmatrix", (1, 1, 1), (64, 1, 1), A.view(np.uint16), B.view(np.uint16), C, D1, D2)
    ref = np.einsum("wmk,wkn->wmn", A.astype(np.float64), B.astype(np.float64)) + C
    np.testing.assert_allclose(D1, ref, rtol=1e-5, atol=1e-5, err_msg=backend.name)
    np.testing.assert_allclose(D2, ref, rtol=1e-5, atol=1e-5, err_msg=backend.name)


def test_mma_emulation_is_sensitive_to_the_layout() -> None:
    """Fragments loaded with A's two k-halves swapped (a wrong layout) give a wrong product."""
    wrong = _portable_source().replace("const int col = (t * 2) + (i & 1) + (i >= 4 ? 8 : 0);",
                                       "const int col = (t * 2) + (i & 1) + (i >= 4 ? 0 : 8);")
    assert wrong != _portable_source()
    mod = compile_source(wrong)
    A, B = _f16(1, 16, 16, seed=1), _f16(1, 16, 8, seed=2)
    C, D = np.zeros((1, 16, 8), np.float32), np.zeros((1, 16, 8), np.float32)
    mod.run("mma_documented", (1, 1, 1), (32, 1, 1), A.view(np.uint16), B.view(np.uint16), C, D)
    ref = A.astype(np.float64)[0] @ B.astype(np.float64)[0]
    assert np.abs(D[0] - ref).max() > 0.1


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_wmma_m16n16k16(emu_only, mode: int) -> None:
    A, B = _f16(16, 16, seed=8), _f16(16, 16, seed=9)
    C = np.random.default_rng(10).standard_normal((16, 16)).astype(np.float32)
    D = np.zeros((16, 16), np.float32)
    emu_only.run("wmma_test", (1, 1, 1), (32, 1, 1), A, B, C, D, mode)
    a = A.astype(np.float64) if mode in (0, 2) else A.astype(np.float64).T       # memory -> logical
    b = B.astype(np.float64).T if mode in (0, 3) else B.astype(np.float64)
    c = C.astype(np.float64) if mode in (0, 2) else C.astype(np.float64).T
    d = 2 * (a @ b + c)
    np.testing.assert_allclose(D if mode in (0, 1) else D.T, d, rtol=1e-5, atol=1e-5)


def test_half_and_float_atomics(emu_only) -> None:
    x = np.random.default_rng(11).standard_normal(64).astype(np.float32)
    fmax, h = np.full(1, -np.inf, np.float32), np.zeros(64 * 4, np.float32)
    emu_only.run("float_atomics_and_half", (1, 1, 1), (64, 1, 1), x, fmax, h)
    assert fmax[0] == x.max()
    a, b = x.astype(np.float16), np.float16(0.1)
    h = h.reshape(64, 4)
    np.testing.assert_array_equal(h[:, 0], a.astype(np.float32))
    a64, b64 = a.astype(np.float64), np.float64(b)                  # exact, then one rounding (IEEE)
    np.testing.assert_array_equal(h[:, 1], (a64 + b64).astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(h[:, 2], (a64 * b64).astype(np.float16).astype(np.float32))
    fma = (a64 * b64 + 1.0).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(h[:, 3], fma)


def test_thread_order_exposes_a_race(emu_only) -> None:
    want = (63 - np.arange(64) + 100 * np.arange(3)[:, None]).astype(np.float32).reshape(-1)
    results = {}
    for schedule in ("forward", "reverse", "random"):
        for barrier in (0, 1):
            out = np.zeros(3 * 64, np.float32)
            emu_only.set_schedule(schedule, seed=1)
            emu_only.run("racy", (3, 1, 1), (64, 1, 1), out, barrier)
            results[schedule, barrier] = out
        np.testing.assert_array_equal(results[schedule, 1], want)
    emu_only.set_schedule("forward")
    racy = [results[s, 0] for s in ("forward", "reverse", "random")]
    assert not all(np.array_equal(r, want) for r in racy)
    assert not np.array_equal(racy[0], racy[1])


def test_deadlock_is_an_error_not_a_hang(emu_only) -> None:
    out = np.zeros(32, np.int32)
    with pytest.raises(EmuError, match="deadlock"):
        emu_only.run("deadlock", (1, 1, 1), (32, 1, 1), out)
    out = np.zeros(64, np.float32)                   # the module still works after an abandoned launch
    emu_only.run("barrier_after_exit", (1, 1, 1), (64, 1, 1), out)
    np.testing.assert_array_equal(out[:40], np.arange(39, -1, -1, dtype=np.float32))


def test_trap_and_partial_warp_mma_fail_the_launch(emu_only) -> None:
    out = np.zeros(32, np.float32)
    with pytest.raises(EmuError, match="__trap"):
        emu_only.run("traps", (1, 1, 1), (32, 1, 1), out, 0)
    with pytest.raises(EmuError, match="all 32 lanes"):
        emu_only.run("traps", (1, 1, 1), (32, 1, 1), out, 1)
    emu_only.run("traps", (1, 1, 1), (32, 1, 1), out, 2)
    assert (out == 1).all()


def test_bad_launches_are_errors(emu_only) -> None:
    out = np.zeros(64, np.float32)
    with pytest.raises(EmuError, match="invalid launch"):
        emu_only.run("barrier_after_exit", (1, 1, 1), (2048, 1, 1), out)
    with pytest.raises(EmuError, match="invalid launch"):
        emu_only.run("barrier_after_exit", (1, 65536, 1), (32, 1, 1), out)
    mod = compile_source('extern "C" __global__ void __launch_bounds__(64) k(float* y) { y[threadIdx.x] = 1.f; }')
    mod.run("k", (1, 1, 1), (64, 1, 1), out)
    with pytest.raises(EmuError, match="__launch_bounds__"):
        mod.run("k", (1, 1, 1), (128, 1, 1), np.zeros(128, np.float32))
    with pytest.raises(KeyError):
        emu_only.function("no_such_kernel")


def test_mma_device_header_compiles_with_nvrtc_for_every_ci_arch() -> None:
    """The tensor-core helpers of the backend's PRELUDE (inline PTX) are valid for NVRTC from sm_75
    (mma.m16n8k16 as two m16n8k8) to sm_120, with these tests' kernels after them."""
    from rtxpack.backends.nvrtc import compile as nv_compile
    from rtxpack.backends.nvrtc.kernels import PRELUDE

    if nv_compile.nvrtc_version() is None:
        pytest.skip("needs NVRTC")
    src = PRELUDE + PORTABLE
    for sm in (75, 90, 120):
        assert nv_compile.compile_program(src, sm)
    ptx = nv_compile.compile_program(src, 90, ptx=True).decode()
    assert "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32" in ptx
    assert "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16" in ptx
    assert "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32" in nv_compile.compile_program(src, 75, ptx=True).decode()