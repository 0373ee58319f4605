"""CUDA C sources for every kernel family, and kernel specializations with their digests.

A *family* is a device template (``conv_igemm``, ``binary``...); a *specialization* fixes its
template arguments (op code, tile shape, 1x1 fast path). Shapes, strides, pads and flags are
runtime arguments, so one specialization serves every shape and every node that needs it: a
ResNet-50 needs about ten kernels, which keeps NVRTC compilation (AOT and JIT) short.

Each specialization becomes one ``extern "C"`` entry named ``k_<digest16>``; its digest is
sha256 over the prelude, its own wrapper source and the compile options (the runtime-cache key).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

from .dtypes import C_TYPES
from .kernels_ops import OPS_FAMILIES, OPS_SOURCE, OPS_TEMPLATE_KINDS
from .kernels_tc import TC_FAMILIES, TC_SOURCE, TC_TEMPLATE_KINDS, WG_FAMILIES, tc_block_threads, wg_smem_bytes

#: NVRTC options used for every program (the arch option is added per target)
COMPILE_OPTIONS: tuple[str, ...] = ("--std=c++17", "-default-device", "--fmad=true")

PRELUDE = r"""
#define RTX_NEG_INF __int_as_float(0xff800000)
struct I6 { int v[6]; };

template <int OP> __device__ __forceinline__ float unary_op(float x, float a, float b) {
  if (OP == 0) return fmaxf(x, 0.f);
  if (OP == 1) return x >= 0.f ? x : x * a;
  if (OP == 2) return 1.f / (1.f + expf(-x));
  if (OP == 3) return tanhf(x);
  if (OP == 4) return erff(x);
  if (OP == 5) return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
  if (OP == 6) return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
  if (OP == 7) return fminf(fmaxf(x, a), b);
  if (OP == 8) return sqrtf(x);
  if (OP == 9) return x;
  return x;
}

// the activation a conv / GEMM epilogue applies (the "relu" argument): 0 none, 1 ReLU, 2 GELU (erf),
// 3 SiLU (x * sigmoid(x)), 4 sigmoid, 5 HardSwish (x * clamp(x / 6 + 1/2, 0, 1))
__device__ __forceinline__ float epilogue_act(int act, float v) {
  if (act == 1) return fmaxf(v, 0.f);
  if (act == 2) return unary_op<5>(v, 0.f, 0.f);
  if (act == 3) return v * unary_op<2>(v, 0.f, 0.f);   // as the unfused Sigmoid, then Mul
  if (act == 4) return unary_op<2>(v, 0.f, 0.f);
  if (act == 5) return v * fminf(fmaxf(v * (1.f / 6.f) + 0.5f, 0.f), 1.f);
  return v;
}

template <int OP> __device__ void unary(const float* __restrict__ x, float* __restrict__ y, long long n, float a, float b) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = unary_op<OP>(x[i], a, b);
}

template <int OP> __device__ __forceinline__ float binary_op(float a, float b) {
  if (OP == 0) return a + b;
  if (OP == 1) return a - b;
  if (OP == 2) return a * b;
  if (OP == 3) return a / b;
  if (OP == 4) return powf(a, b);
  return a;
}

template <int OP> __device__ void binary(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                                          int n, int nd, I6 shape, I6 sa, I6 sb) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int r = i, oa = 0, ob = 0;
    for (int d = nd - 1; d >= 0; --d) {
      int c = r % shape.v[d];
      r /= shape.v[d];
      oa += c * sa.v[d];
      ob += c * sb.v[d];
    }
    y[i] = binary_op<OP>(a[oa], b[ob]);
  }
}

// y[dst_off + sum c_d*sy_d] = x[src_off + sum c_d*sx_d]: transpose, slice, split, concat, expand.
__device__ void strided_copy(const float* __restrict__ x, float* __restrict__ y, int n, int nd, I6 shape, I6 sx, I6 sy,
                             int ox, int oy) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int r = i, ix = ox, iy = oy;
    for (int d = nd - 1; d >= 0; --d) {
      int c = r % shape.v[d];
      r /= shape.v[d];
      ix += c * sx.v[d];
      iy += c * sy.v[d];
    }
    y[iy] = x[ix];
  }
}

// 4 consecutive floats from 16-byte aligned shared memory in one LDS.128
__device__ __forceinline__ void load4(float* dst, const float* src) {
  const float4 v = *reinterpret_cast<const float4*>(src);
  dst[0] = v.x; dst[1] = v.y; dst[2] = v.z; dst[3] = v.w;
}

// One output pixel's column of im2col(x) (group offset c0 = g * Cg channels), decoded once and read
// at any k: x itself for a 1x1 stride-1 convolution (K1), else through the per-k table
// ktab[k] = (c*H*W + kh*dh*W + kw*dw, kh*dh, kw*dw), so no divisions per element.
struct Im2col {
  const float* __restrict__ base;
  int ih0, iw0, H, W, HW;
  bool valid;
  // element k of the column (0 for padding, past the last pixel)
  template <bool K1> __device__ __forceinline__ float at(int k, const int4* __restrict__ ktab) const {
    const float* p = addr<K1>(k, k + 1, ktab);
    return p ? *p : 0.f;
  }
  // the address of element k < ke of the column, nullptr where it is zero (padding, past the last pixel)
  template <bool K1> __device__ __forceinline__ const float* addr(int k, int ke, const int4* __restrict__ ktab) const {
    if (!valid || k >= ke) return nullptr;
    if (K1) return base + (long long)k * HW;
    const int4 tb = ktab[k];
    const int ih = ih0 + tb.y, iw = iw0 + tb.z;
    return ih >= 0 && ih < H && iw >= 0 && iw < W ? base + tb.x : nullptr;
  }
};
template <bool K1>
__device__ __forceinline__ Im2col im2col_column(const float* __restrict__ x, int p, int P, int C, int c0, int H,
                                                int W, int OH, int OW, int sh, int sw, int ph, int pw) {
  const int OHW = OH * OW;
  Im2col col;
  col.valid = p < P;
  const int n = col.valid ? p / OHW : 0, r = col.valid ? p - n * OHW : 0;
  const int oh = r / OW, ow = r - oh * OW;
  col.ih0 = oh * sh - ph;
  col.iw0 = ow * sw - pw;
  col.H = H;
  col.W = W;
  col.HW = OHW;    // K1: the output has the input's size
  col.base = K1 ? x + ((long long)n * C + c0) * OHW + r
                : x + ((long long)n * C + c0) * H * W + (long long)col.ih0 * W + col.iw0;
  return col;
}

// The double-buffered k loop of the implicit-GEMM convolutions: load(k0) fetches the BK-slice at k0
// into registers, store(buf) writes them to shared buffer buf, step(buf) multiplies that buffer; the
// next slice is in flight while the current one is multiplied.
template <int BK, class Load, class Store, class Step>
__device__ __forceinline__ void double_buffered(int kb, int ke, Load&& load, Store&& store, Step&& step) {
  load(kb);
  store(0);
  __syncthreads();
  int buf = 0;
  for (int k0 = kb; k0 < ke; k0 += BK) {
    const bool more = k0 + BK < ke;
    if (more) load(k0 + BK);
    step(buf);
    if (more) {
      store(buf ^ 1);
      __syncthreads();
      buf ^= 1;
    }
  }
}

// Implicit-GEMM convolution, one group per blockIdx.z: C[oc, p] = sum_k W[oc, k] * im2col(X)[k, p]
// with p = (n, oh, ow). Epilogue: + bias[oc] (+ residual) (relu). BatchNorm is folded into W, bias.
template <int BM, int BN, int BK, int TM, int TN, bool K1>
__device__ void conv_igemm(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                           const float* __restrict__ res, float* __restrict__ y, int N, int C, int H, int W, int OC,
                           int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, int G,
                           int relu, int S, float* __restrict__ ws, const int4* __restrict__ ktab) {
  // split-K (S > 1): blockIdx.z = g * S + s; block s sums k in [kb, ke) into ws[s][oc][p] (no epilogue)
  constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
  __shared__ __align__(16) float As[2][BK][BM];
  __shared__ __align__(16) float Bs[2][BK][BN];
  const int g = blockIdx.z / S, split = blockIdx.z - g * S, Cg = C / G, OCg = OC / G;
  const int M = OCg, OHW = OH * OW, P = N * OHW, KK = KH * KW, K = Cg * KK;
  const int kchunk = ((K + S * BK - 1) / (S * BK)) * BK;
  const int kb = split * kchunk, ke = min(K, kb + kchunk);
  const int m0 = blockIdx.y * BM, p0 = blockIdx.x * BN;
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const float* __restrict__ wg = w + (long long)g * OCg * K;
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;
  constexpr int AL = (BM * BK + NT - 1) / NT, BL = (BK * BN + NT - 1) / NT;
  static_assert(NT % BN == 0, "each thread loads one fixed output column");
  constexpr int KSTEP = NT / BN;
  float ra[AL], rb[BL];
  // this thread's im2col column (output pixel) is the same for every k: decode it once
  const int kk0 = tid / BN;
  const Im2col col = im2col_column<K1>(x, p0 + tid % BN, P, C, g * Cg, H, W, OH, OW, sh, sw, ph, pw);
  auto load = [&](int k0) {
#pragma unroll
    for (int t = 0; t < AL; ++t) {
      int e = tid + t * NT;
      int i = e / BK, kk = e % BK;
      int m = m0 + i, k = k0 + kk;
      ra[t] = (e < BM * BK && m < M && k < ke) ? wg[(long long)m * K + k] : 0.f;
    }
#pragma unroll
    for (int t = 0; t < BL; ++t) {
      int kk = kk0 + t * KSTEP, k = k0 + kk;
      rb[t] = kk < BK && k < ke ? col.at<K1>(k, ktab) : 0.f;
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int t = 0; t < AL; ++t) {
      int e = tid + t * NT;
      if (e < BM * BK) As[buf][e % BK][e / BK] = ra[t];
    }
#pragma unroll
    for (int t = 0; t < BL; ++t) {
      int e = tid + t * NT;
      if (e < BK * BN) Bs[buf][e / BN][e % BN] = rb[t];
    }
  };
  double_buffered<BK>(kb, ke, load, store, [&](int buf) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) load4(&a[i], &As[buf][kk][ty * TM + i]);
#pragma unroll
      for (int j = 0; j < TN; j += 4) load4(&b[j], &Bs[buf][kk][tx * TN + j]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
  });
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    int m = m0 + ty * TM + i;
    if (m >= M) continue;
    int oc = g * OCg + m;
    float bv = bias ? bias[oc] : 0.f;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      int p = p0 + tx * TN + j;
      if (p >= P) continue;
      if (S > 1) {
        ws[((long long)split * OC + oc) * P + p] = acc[i][j];
        continue;
      }
      int n = p / OHW, r = p - n * OHW;
      long long o = ((long long)n * OC + oc) * OHW + r;
      float v = acc[i][j] + bv;
      if (res) v += res[o];
      v = epilogue_act(relu, v);
      y[o] = v;
    }
  }
}

// Sum split-K partials ws[S][OC][N*OHW] into NCHW y with the conv epilogue.
__device__ void splitk_reduce(const float* __restrict__ ws, const float* __restrict__ bias, const float* __restrict__ res,
                              float* __restrict__ y, int N, int OC, int OHW, int S, int relu) {
  const long long P = (long long)N * OHW, total = P * OC;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    int r = i % OHW;
    long long t = i / OHW;
    int oc = t % OC, n = t / OC;
    long long p = (long long)n * OHW + r;
    float v = bias ? bias[oc] : 0.f;
    for (int s = 0; s < S; ++s) v += ws[((long long)s * OC + oc) * P + p];
    if (res) v += res[i];
    v = epilogue_act(relu, v);
    y[i] = v;
  }
}

// Sum GEMM split-K partials ws[S][M][N] with the GEMM epilogue.
__device__ void gemm_splitk_reduce(const float* __restrict__ ws, const float* __restrict__ bias,
                                   const float* __restrict__ res, float* __restrict__ Cm, int M, int N, int S, int sbm,
                                   int sbn, float alpha, float beta, int relu) {
  const int total = M * N;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    int m = i / N, n = i - m * N;
    float v = 0.f;
    for (int s = 0; s < S; ++s) v += ws[(long long)s * total + i];
    v *= alpha;
    if (bias) v += beta * bias[(long long)m * sbm + (long long)n * sbn];
    if (res) v += res[i];
    v = epilogue_act(relu, v);
    Cm[i] = v;
  }
}

// The (n, c, h, w) coordinates of element i of an NCHW tensor with C channels of H x W.
struct Nchw { int n, c, h, w; };
__device__ __forceinline__ Nchw nchw_of(long long i, int C, int H, int W) {
  Nchw o;
  o.w = i % W;
  long long r = i / W;
  o.h = r % H;
  r /= H;
  o.c = r % C;
  o.n = r / C;
  return o;
}

// Direct convolution, one thread per output (depthwise and other narrow groups).
__device__ void conv_direct(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                            const float* __restrict__ res, float* __restrict__ y, int N, int C, int H, int W, int OC,
                            int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, int G,
                            int relu) {
  const int Cg = C / G, OCg = OC / G;
  const long long total = (long long)N * OC * OH * OW;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const Nchw o = nchw_of(i, OC, OH, OW);
    const int ow = o.w, oh = o.h, oc = o.c, n = o.n;
    int g = oc / OCg;
    float acc = bias ? bias[oc] : 0.f;
    const float* wp = w + (long long)oc * Cg * KH * KW;
    for (int c = 0; c < Cg; ++c) {
      const float* xp = x + ((long long)n * C + g * Cg + c) * H * W;
      for (int kh = 0; kh < KH; ++kh) {
        int ih = oh * sh - ph + kh * dh;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
          int iw = ow * sw - pw + kw * dw;
          if (iw < 0 || iw >= W) continue;
          acc = fmaf(xp[ih * W + iw], wp[(c * KH + kh) * KW + kw], acc);
        }
      }
    }
    if (res) acc += res[i];
    acc = epilogue_act(relu, acc);
    y[i] = acc;
  }
}

// Depthwise convolution (one filter per channel: groups == C == OC), K x K taps, stride S, no dilation:
// each thread computes V = 4 neighbouring outputs of a row, loading each input row's (V - 1) * S + K
// values once for all of them, taps unrolled. Same parameters as conv_direct (the template fixes KH, KW,
// sh, sw; dh = dw = 1). ConvNeXt's 7x7, MobileNet's and EfficientNet's 3x3 / 5x5.
template <int K, int S>
__device__ void conv_dw(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                        const float* __restrict__ res, float* __restrict__ y, int N, int C, int H, int W, int OC,
                        int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, int G,
                        int relu) {
  constexpr int V = 4, SPAN = (V - 1) * S + K;
  const int OWV = (OW + V - 1) / V;
  const long long total = (long long)N * C * OH * OWV;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const int owv = (int)(i % OWV);
    const long long r = i / OWV;
    const int oh = (int)(r % OH);
    const long long nc = r / OH;
    const int c = (int)(nc % C);
    const float* xp = x + nc * H * W;
    const float* wp = w + c * K * K;
    const int iw0 = owv * V * S - pw;
    float acc[V];
    const float b = bias ? bias[c] : 0.f;
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = b;
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const int ih = oh * S - ph + kh;
      if (ih < 0 || ih >= H) continue;
      const float* row = xp + (long long)ih * W;
      float in[SPAN];
#pragma unroll
      for (int j = 0; j < SPAN; ++j) {
        const int iw = iw0 + j;
        in[j] = iw >= 0 && iw < W ? row[iw] : 0.f;
      }
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
        const float wv = wp[kh * K + kw];
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = fmaf(in[v * S + kw], wv, acc[v]);
      }
    }
    const long long ob = r * OW;
#pragma unroll
    for (int v = 0; v < V; ++v) {
      const int ow = owv * V + v;
      if (ow >= OW) break;
      float a = acc[v];
      if (res) a += res[ob + ow];
      y[ob + ow] = epilogue_act(relu, a);
    }
  }
}

// One block of a batched / split-K GEMM launch: blockIdx.z is the split (S > 1, one batch) or the
// batch b = b0 * nb1 + b1; [kb, ke) is its k range (BK-aligned chunks), (m0, n0) its tile's origin,
// aofs / bofs / cofs the element offsets of its A, B and C matrices.
struct GemmBlock {
  int split, kb, ke, m0, n0;
  long long aofs, bofs, cofs;
};
template <int BM, int BN, int BK>
__device__ __forceinline__ GemmBlock gemm_block(int M, int N, int K, int S, int nb1, long long sA0, long long sA1,
                                                long long sB0, long long sB1) {
  GemmBlock g;
  g.split = S > 1 ? blockIdx.z : 0;
  const int kchunk = ((K + S * BK - 1) / (S * BK)) * BK;
  g.kb = g.split * kchunk;
  g.ke = min(K, g.kb + kchunk);
  const int b = S > 1 ? 0 : blockIdx.z, b0 = b / nb1, b1 = b - b0 * nb1;
  g.aofs = b0 * sA0 + b1 * sA1;
  g.bofs = b0 * sB0 + b1 * sB1;
  g.cofs = (long long)b * M * N;
  g.m0 = blockIdx.y * BM;
  g.n0 = blockIdx.x * BN;
  return g;
}

// The GEMM epilogue of one output element (m, n): with split-K its partial sum to ws[split][m][n],
// else C = alpha * acc + beta * bias (+ res), then the activation.
__device__ __forceinline__ void gemm_store(float acc, int m, int n, const GemmBlock& g, int M, int N, int S,
                                           float* __restrict__ ws, const float* __restrict__ bias, int sbm, int sbn,
                                           float alpha, float beta, const float* __restrict__ res,
                                           float* __restrict__ Cm, int relu) {
  if (S > 1) {
    ws[((long long)g.split * M + m) * N + n] = acc;
    return;
  }
  float v = alpha * acc;
  if (bias) v += beta * bias[(long long)m * sbm + (long long)n * sbn];
  const long long o = g.cofs + (long long)m * N + n;
  if (res) v += res[o];
  Cm[o] = epilogue_act(relu, v);
}

// Stage a ROWS x BK slice of an fp32 operand (element (r, k) at p[ofs + r * sR + k * sK]; rows from r0,
// k from k0) in registers, runs of 4 per thread: along the rows when ``rvec`` (row-contiguous, 16-byte
// aligned), along k when ``kvec`` (k-contiguous, 16-byte aligned rows), else 4 loads along k; one
// 16-byte load per run when the whole run is inside (R rows, k < ke), zeros outside. f32_unstage writes
// them k-major to s[BK][ROWS + 4].
template <int ROWS, int BK, int NT>
__device__ __forceinline__ void f32_stage(float4 (&r)[ROWS * BK / 4 / NT], const float* __restrict__ p, long long ofs,
                                          int r0, int R, int sR, int sK, int k0, int ke, bool rvec, bool kvec, int tid) {
#pragma unroll
  for (int t = 0; t < ROWS * BK / 4 / NT; ++t) {
    const int e = tid + t * NT;
    const int row = rvec ? r0 + 4 * (e % (ROWS / 4)) : r0 + e / (BK / 4);
    const int k = rvec ? k0 + e / (ROWS / 4) : k0 + 4 * (e % (BK / 4));
    const int dr = rvec ? 1 : 0, dk = rvec ? 0 : 1;     // the run's direction
    const long long at = ofs + (long long)row * sR + (long long)k * sK;
    if ((rvec && row + 3 < R && k < ke) || (kvec && row < R && k + 3 < ke)) {
      r[t] = *reinterpret_cast<const float4*>(p + at);
    } else {
      float v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int ru = row + u * dr, ku = k + u * dk;
        v[u] = ru < R && ku < ke ? p[at + (long long)u * (rvec ? sR : sK)] : 0.f;
      }
      r[t] = make_float4(v[0], v[1], v[2], v[3]);
    }
  }
}
template <int ROWS, int BK, int NT>
__device__ __forceinline__ void f32_unstage(const float4 (&r)[ROWS * BK / 4 / NT], float (*s)[ROWS + 4], bool rvec,
                                            int tid) {
#pragma unroll
  for (int t = 0; t < ROWS * BK / 4 / NT; ++t) {
    const int e = tid + t * NT;
    if (rvec) {
      *reinterpret_cast<float4*>(&s[e / (ROWS / 4)][4 * (e % (ROWS / 4))]) = r[t];
    } else {
      const int row = e / (BK / 4), k = 4 * (e % (BK / 4));
      s[k][row] = r[t].x;
      s[k + 1][row] = r[t].y;
      s[k + 2][row] = r[t].z;
      s[k + 3][row] = r[t].w;
    }
  }
}

// Batched GEMM with arbitrary strides: C[b, m, n] = alpha * sum_k A[m, k] B[k, n] + beta * bias (+ res) (relu).
// Batch b = b0 * nb1 + b1 (two batch levels cover broadcast MatMul after collapsing). Each thread
// computes a TM x TN microtile from k-major shared tiles; the next BK-slice is loaded into registers
// (16-byte loads along whichever dimension of an operand is contiguous) while the current one is used.
template <int BM, int BN, int BK, int TM, int TN>
__device__ void gemm(const float* __restrict__ A, const float* __restrict__ B, const float* __restrict__ bias,
                     const float* __restrict__ res, float* __restrict__ Cm, int M, int N, int K, int sAm, int sAk,
                     int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, float alpha,
                     float beta, int relu, int S, float* __restrict__ ws) {
  // split-K (S > 1, one batch only): blockIdx.z = split; partial sums go to ws[split][m][n]
  constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
  static_assert((BM * BK / 4) % NT == 0 && (BN * BK / 4) % NT == 0, "whole runs of 4 per thread");
  __shared__ __align__(16) float As[2][BK][BM + 4];
  __shared__ __align__(16) float Bs[2][BK][BN + 4];
  const GemmBlock g = gemm_block<BM, BN, BK>(M, N, K, S, nb1, sA0, sA1, sB0, sB1);
  const long long aofs = g.aofs, bofs = g.bofs;
  const int m0 = g.m0, n0 = g.n0;
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const bool aK = sAk == 1 && (sAm & 3) == 0 && (aofs & 3) == 0;
  const bool aR = !aK && sAm == 1 && (sAk & 3) == 0 && (aofs & 3) == 0;
  const bool bK = sBk == 1 && (sBn & 3) == 0 && (bofs & 3) == 0;
  const bool bR = !bK && sBn == 1 && (sBk & 3) == 0 && (bofs & 3) == 0;
  float acc[TM][TN] = {};
  float4 ra[BM * BK / 4 / NT], rb[BN * BK / 4 / NT];
  auto load = [&](int k0) {
    f32_stage<BM, BK, NT>(ra, A, aofs, m0, M, sAm, sAk, k0, g.ke, aR, aK, tid);
    f32_stage<BN, BK, NT>(rb, B, bofs, n0, N, sBn, sBk, k0, g.ke, bR, bK, tid);
  };
  auto store = [&](int buf) {
    f32_unstage<BM, BK, NT>(ra, As[buf], aR, tid);
    f32_unstage<BN, BK, NT>(rb, Bs[buf], bR, tid);
  };
  double_buffered<BK>(g.kb, g.ke, load, store, [&](int buf) {
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], bb[TN];
#pragma unroll
      for (int i = 0; i < TM; i += 4) load4(&a[i], &As[buf][kk][ty * TM + i]);
#pragma unroll
      for (int j = 0; j < TN; j += 4) load4(&bb[j], &Bs[buf][kk][tx * TN + j]);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], bb[j], acc[i][j]);
    }
  });
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty * TM + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx * TN + j;
      if (n < N) gemm_store(acc[i][j], m, n, g, M, N, S, ws, bias, sbm, sbn, alpha, beta, res, Cm, relu);
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); result broadcast to all threads.
__device__ float block_sum(float v) {
  __shared__ float s[33];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? s[lane] : 0.f;
    t = warp_sum(t);
    if (lane == 0) s[32] = t;
  }
  __syncthreads();
  return s[32];
}
__device__ float block_max(float v) {
  __shared__ float s[33];
  v = warp_max(v);
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s[wid] = v;
  __syncthreads();
  if (wid == 0) {
    float t = lane < nw ? s[lane] : RTX_NEG_INF;
    t = warp_max(t);
    if (lane == 0) s[32] = t;
  }
  __syncthreads();
  return s[32];
}

// Rows are (outer, inner) pairs of an [outer, len, inner] view; one block per row.
__device__ void softmax(const float* __restrict__ x, float* __restrict__ y, int len, int inner) {
  const int row = blockIdx.x, o = row / inner, in = row - o * inner;
  const long long base = (long long)o * len * inner + in;
  float m = RTX_NEG_INF;
  for (int i = threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, x[base + (long long)i * inner]);
  m = block_max(m);
  float s = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) s += expf(x[base + (long long)i * inner] - m);
  s = block_sum(s);
  const float inv = 1.f / s;
  for (int i = threadIdx.x; i < len; i += blockDim.x) y[base + (long long)i * inner] = expf(x[base + (long long)i * inner] - m) * inv;
}

// Attention probabilities, one row of scores per block, in place: y = softmax(x + mask) over the last
// axis; row r is query m = r % Sq of batch b = r / Sq = b0 * nb1 + b1, its mask element for column n at
// b0 * sM0 + b1 * sM1 + m * sMm + n * sMn. ``guard``: a row with no finite score gives zeros.
__device__ void attn_softmax(const float* x, const float* __restrict__ mask, float* y, int len, int Sq, int nb1,
                             int sM0, int sM1, int sMm, int sMn, int guard) {
  const int row = blockIdx.x, b = row / Sq, m = row - b * Sq, b0 = b / nb1, b1 = b - b0 * nb1;
  const long long base = (long long)row * len, mb = (long long)b0 * sM0 + (long long)b1 * sM1 + (long long)m * sMm;
  auto at = [&](int i) { return x[base + i] + (mask ? mask[mb + (long long)i * sMn] : 0.f); };
  float mx = RTX_NEG_INF;
  for (int i = threadIdx.x; i < len; i += blockDim.x) mx = fmaxf(mx, at(i));
  mx = block_max(mx);
  float s = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) s += expf(at(i) - mx);
  s = block_sum(s);
  const float inv = 1.f / s;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const float p = expf(at(i) - mx) * inv;
    y[base + i] = guard && p != p ? 0.f : p;
  }
}

__device__ void reduce_mean(const float* __restrict__ x, float* __restrict__ y, int len, int inner) {
  const int row = blockIdx.x, o = row / inner, in = row - o * inner;
  const long long base = (long long)o * len * inner + in;
  float s = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) s += x[base + (long long)i * inner];
  s = block_sum(s);
  if (threadIdx.x == 0) y[row] = s / (float)len;
}

// Mean of x[base, base + len) and 1 / sqrt(variance + eps) into *rstd, computed by the whole block.
__device__ float row_mean_rstd(const float* __restrict__ x, long long base, int len, float eps, float* rstd) {
  float s = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) s += x[base + i];
  const float mean = block_sum(s) / (float)len;
  float v = 0.f;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    float d = x[base + i] - mean;
    v += d * d;
  }
  *rstd = rsqrtf(block_sum(v) / (float)len + eps);
  return mean;
}

__device__ void layernorm(const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ bias,
                          float* __restrict__ y, int len, float eps) {
  const long long base = (long long)blockIdx.x * len;
  float rstd;
  const float mean = row_mean_rstd(x, base, len, eps, &rstd);
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    float t = (x[base + i] - mean) * rstd * scale[i];
    y[base + i] = bias ? t + bias[i] : t;
  }
}

// LayerNorm over the channels of each pixel of an [outer, C, P] tensor (NCHW), written as [outer, P, C]
// (NHWC): the Transpose exporters put before a channels-last LayerNorm (ConvNeXt) costs no copy. A block
// of 256 threads takes 8 pixels: it loads x[c][p0, p0 + 8) (one 32-byte run per channel) into shared
// memory (9 floats a channel: conflict-free by channel), then a warp normalizes each pixel, two-pass
// statistics in fp32, and writes its C outputs contiguously.
#define LNCS_CMAX 1024
__device__ void layernorm_cs(const float* __restrict__ x, const float* __restrict__ scale,
                             const float* __restrict__ bias, float* __restrict__ y, int C, int P, float eps) {
  __shared__ float t[LNCS_CMAX * 9];
  const int p0 = blockIdx.x * 8, np = min(8, P - p0);
  const float* xo = x + (long long)blockIdx.y * C * P + p0;
  for (int i = threadIdx.x; i < C * 8; i += blockDim.x) {
    const int c = i >> 3, q = i & 7;
    if (q < np) t[c * 9 + q] = xo[(long long)c * P + q];
  }
  __syncthreads();
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (w >= np) return;
  float s = 0.f;
  for (int c = lane; c < C; c += 32) s += t[c * 9 + w];
  const float mean = warp_sum(s) / (float)C;
  float v = 0.f;
  for (int c = lane; c < C; c += 32) {
    const float d = t[c * 9 + w] - mean;
    v += d * d;
  }
  const float rstd = rsqrtf(warp_sum(v) / (float)C + eps);
  float* yo = y + ((long long)blockIdx.y * P + p0 + w) * C;
  for (int c = lane; c < C; c += 32) {
    const float r = (t[c * 9 + w] - mean) * rstd * scale[c];
    yo[c] = bias ? r + bias[c] : r;
  }
}

// y = x * scale[c] + shift[c] over an [outer, C, inner] view (standalone BatchNormalization).
__device__ void channel_affine(const float* __restrict__ x, const float* __restrict__ scale,
                               const float* __restrict__ shift, float* __restrict__ y, int n, int C, int inner) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int c = (i / inner) % C;
    y[i] = fmaf(x[i], scale[c], shift[c]);
  }
}

template <int MAXP>
__device__ void pool2d(const float* __restrict__ x, float* __restrict__ y, int NC, int H, int W, int OH, int OW, int KH,
                       int KW, int sh, int sw, int ph0, int pw0, int ph1, int pw1, int dh, int dw, int count_pad) {
  const int total = NC * OH * OW;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    int ow = i % OW, oh = (i / OW) % OH, nc = i / (OW * OH);
    const float* xp = x + (long long)nc * H * W;
    if (MAXP) {
      float m = RTX_NEG_INF;
      for (int kh = 0; kh < KH; ++kh) {
        int ih = oh * sh - ph0 + kh * dh;
        if (ih < 0 || ih >= H) continue;
        for (int kw = 0; kw < KW; ++kw) {
          int iw = ow * sw - pw0 + kw * dw;
          if (iw < 0 || iw >= W) continue;
          m = fmaxf(m, xp[ih * W + iw]);
        }
      }
      y[i] = m;
    } else {
      int hs = oh * sh - ph0, ws = ow * sw - pw0;
      int he = min(hs + KH, H + ph1), we = min(ws + KW, W + pw1);
      int pool = (he - hs) * (we - ws);
      hs = max(hs, 0); ws = max(ws, 0); he = min(he, H); we = min(we, W);
      float s = 0.f;
      for (int ih = hs; ih < he; ++ih)
        for (int iw = ws; iw < we; ++iw) s += xp[ih * W + iw];
      int cnt = count_pad ? pool : (he - hs) * (we - ws);
      y[i] = s / (float)(cnt > 0 ? cnt : 1);
    }
  }
}

__device__ void lrn(const float* __restrict__ x, float* __restrict__ y, int n, int C, int inner, int size, float alpha,
                    float beta, float bias) {
  const int lo = (size - 1) / 2, hi = size - 1 - lo;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int in = i % inner, c = (i / inner) % C, o = i / (inner * C);
    float s = 0.f;
    for (int cc = max(0, c - lo); cc <= min(C - 1, c + hi); ++cc) {
      float v = x[((long long)o * C + cc) * inner + in];
      s += v * v;
    }
    y[i] = x[i] / powf(bias + alpha / (float)size * s, beta);
  }
}

__device__ void gather(const float* __restrict__ data, const long long* __restrict__ idx, float* __restrict__ y, int n,
                       int axis_len, int nidx, int inner) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    int in = i % inner, j = (i / inner) % nidx, o = i / (inner * nidx);
    long long t = idx[j];
    if (t < 0) t += axis_len;
    y[i] = data[((long long)o * axis_len + t) * inner + in];
  }
}
"""

PRELUDE += OPS_SOURCE + TC_SOURCE

# family -> (parameter declarations, number of template args). Entries forward every parameter.
_CONV_PARAMS = ("const float* x, const float* w, const float* bias, const float* res, float* y, int N, int C, int H, "
                "int W, int OC, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, "
                "int G, int relu")
FAMILIES: dict[str, str] = {
    "unary": "const float* x, float* y, long long n, float a, float b",
    "binary": "const float* a, const float* b, float* y, int n, int nd, I6 shape, I6 sa, I6 sb",
    "strided_copy": "const float* x, float* y, int n, int nd, I6 shape, I6 sx, I6 sy, int ox, int oy",
    "conv_igemm": _CONV_PARAMS + ", int S, float* ws, const int4* ktab",
    "splitk_reduce": "const float* ws, const float* bias, const float* res, float* y, int N, int OC, int OHW, int S, int relu",
    "conv_direct": _CONV_PARAMS,
    "conv_dw": _CONV_PARAMS,
    "gemm": ("const float* A, const float* B, const float* bias, const float* res, float* Cm, int M, int N, int K, "
             "int sAm, int sAk, int sBk, int sBn, int nb1, int sA0, int sA1, int sB0, int sB1, int sbm, int sbn, "
             "float alpha, float beta, int relu, int S, float* ws"),
    "gemm_splitk_reduce": ("const float* ws, const float* bias, const float* res, float* Cm, int M, int N, int S, "
                           "int sbm, int sbn, float alpha, float beta, int relu"),
    "softmax": "const float* x, float* y, int len, int inner",
    "attn_softmax": ("const float* x, const float* mask, float* y, int len, int Sq, int nb1, int sM0, int sM1, "
                     "int sMm, int sMn, int guard"),
    "reduce_mean": "const float* x, float* y, int len, int inner",
    "layernorm": "const float* x, const float* scale, const float* bias, float* y, int len, float eps",
    "layernorm_cs": "const float* x, const float* scale, const float* bias, float* y, int C, int P, float eps",
    "channel_affine": "const float* x, const float* scale, const float* shift, float* y, int n, int C, int inner",
    "pool2d": ("const float* x, float* y, int NC, int H, int W, int OH, int OW, int KH, int KW, int sh, int sw, "
               "int ph0, int pw0, int ph1, int pw1, int dh, int dw, int count_pad"),
    "lrn": "const float* x, float* y, int n, int C, int inner, int size, float alpha, float beta, float bias",
    "gather": "const float* data, const long long* idx, float* y, int n, int axis_len, int nidx, int inner",
}

FAMILIES.update(OPS_FAMILIES)
FAMILIES.update(TC_FAMILIES)
#: template-argument kinds per family: "i" integer, "b" bool, "t" element type code (default: all "i")
TEMPLATE_KINDS: dict[str, str] = {"conv_igemm": "iiiiib", **OPS_TEMPLATE_KINDS, **TC_TEMPLATE_KINDS}

UNARY_OPS = {"Relu": 0, "LeakyRelu": 1, "Sigmoid": 2, "Tanh": 3, "Erf": 4, "Gelu": 5, "GeluTanh": 6, "Clip": 7,
             "Sqrt": 8, "Copy": 9}
BINARY_OPS = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4}

#: fp32 implicit-GEMM convolution tiles (BM, BN, BK, TM, TN), BM over output channels and BN over output
#: pixels; microtiles are multiples of 4 (LDS.128). "large" for big layers (more FMAs per load), "small"
#: keeps SMs busy at batch 1; the tuner times them per layer.
TILES = {"large": (128, 64, 8, 8, 4), "big": (64, 64, 8, 4, 4), "small": (32, 32, 8, 4, 4)}
#: fp32 GEMM block tiles (BM, BN, BK, TM, TN), biggest first: the candidates the tuner times per layer
#: (with split-K), and the order the heuristic tries them in.
GEMM_TILES: dict[str, tuple[int, int, int, int, int]] = {
    "f128x64": (128, 64, 16, 8, 8),
    "f64x64": (64, 64, 16, 8, 4),
    "f64x32": (64, 32, 16, 4, 4),
    "f32x32": (32, 32, 16, 4, 4),
}


def _arg_type(decl: str) -> str:
    t = decl.rsplit(" ", 1)[0].strip()
    if "*" in t:
        return "p"
    return {"int": "i", "long long": "q", "float": "f", "I6": "I6", "F6": "F6", "unsigned long long": "Q"}[t]


def param_types(family: str) -> tuple[str, ...]:
    """Launch-argument kinds of a family: p(ointer), i(nt32), q(int64), f(loat32), I6 (6 x int32)."""
    return tuple(_arg_type(d.strip()) for d in FAMILIES[family].split(","))


@dataclass(frozen=True)
class KernelSpec:
    """One specialization: a family and its template arguments (``()`` for non-templates)."""

    family: str
    targs: tuple[int, ...] = ()

    @property
    def block_threads(self) -> int:
        if self.family in ("conv_igemm", "gemm"):
            bm, bn, _, tm, tn = self.targs[:5]
            return (bm // tm) * (bn // tn)
        if self.family in TC_FAMILIES:
            return tc_block_threads(self.family, self.targs)
        return 256

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory a launch of this kernel passes (0: static shared memory only)."""
        return wg_smem_bytes(self.targs) if self.family in WG_FAMILIES else 0

    def wrapper(self, entry: str) -> str:
        params = FAMILIES[self.family]
        names = ", ".join(d.strip().rsplit(" ", 1)[1].lstrip("*") for d in params.split(","))
        call = self.family
        if self.targs:
            kinds = TEMPLATE_KINDS.get(self.family, "i" * len(self.targs))
            call += "<" + ", ".join(("true" if a else "false") if kinds[i] == "b" else C_TYPES[a] if kinds[i] == "t"
                                    else str(a) for i, a in enumerate(self.targs)) + ">"
        bounds = f"__launch_bounds__({self.block_threads}) "
        return f'extern "C" __global__ void {bounds}{entry}({params}) {{ {call}({names}); }}\n'

    def key(self) -> str:
        return f"{self.family}<{','.join(map(str, self.targs))}>"


def kernel_digest(spec: KernelSpec, options: Sequence[str] = COMPILE_OPTIONS) -> str:
    """sha256 over the prelude, this specialization's wrapper and the compile options."""
    h = hashlib.sha256(PRELUDE.encode())
    h.update(spec.wrapper("ENTRY").encode())
    h.update("\0".join(options).encode())
    return h.hexdigest()


def entry_name(spec: KernelSpec) -> str:
    return "k_" + kernel_digest(spec)[:16]


def program_source(specs: Sequence[KernelSpec]) -> str:
    """The single NVRTC program that holds every specialization a plan needs (one per arch)."""
    return PRELUDE + "".join(s.wrapper(entry_name(s)) for s in specs)


def module_digest(specs: Sequence[KernelSpec], options: Sequence[str] = COMPILE_OPTIONS) -> str:
    """Digest of a module = sha256 over its sorted kernel digests (the runtime-cache key part)."""
    h = hashlib.sha256()
    for d in sorted(kernel_digest(s, options) for s in specs):
        h.update(d.encode())
    return h.hexdigest()
