"""CUDA C of the operator families beyond GEMM/convolution: typed elementwise ops, selection and
indexing (Where, Gather*, ScatterND, Tile, Pad), Resize, normalizations, reductions, scans and
ConvTranspose. Appended to ``kernels.PRELUDE``; the families are declared in ``OPS_FAMILIES``.

Template arguments of kind ``t`` are element type codes (``dtypes.TYPE_CODES``: 0 float, 1 int64,
2 int32, 3 bool as one byte); kernels that only move elements take the element size in bytes.
"""
from __future__ import annotations

OPS_SOURCE = r"""
struct F6 { float v[6]; };
template <typename A, typename B> struct rtx_same { static constexpr bool value = false; };
template <typename A> struct rtx_same<A, A> { static constexpr bool value = true; };
template <int B> struct rtx_bytes;
template <> struct rtx_bytes<1> { typedef unsigned char T; };
template <> struct rtx_bytes<2> { typedef unsigned short T; };
template <> struct rtx_bytes<4> { typedef unsigned int T; };
template <> struct rtx_bytes<8> { typedef unsigned long long T; };

__device__ __forceinline__ int rtx_offset(long long i, int nd, const I6& shape, const I6& st) {
  long long r = i;
  int o = 0;
  for (int d = nd - 1; d >= 0; --d) {
    int c = (int)(r % shape.v[d]);
    r /= shape.v[d];
    o += c * st.v[d];
  }
  return o;
}

// ---- typed elementwise ------------------------------------------------------------------------------
// unary codes: 0 cast 1 neg 2 abs 3 not 4 isnan 5 isinf(a: +inf, b: -inf) 6 sin 7 cos 8 exp 9 log
// 10 reciprocal 11 floor 12 ceil 13 hardsigmoid(a, b) 14 hardswish 15 softplus 16 elu(a) 17 sign
// 18 round (half to even) 19 tan 20 softsign 21 mish 22 selu(a alpha, b gamma) 23 celu(a) 24 thresholdedrelu(a)
// 25 relu 26 sigmoid 27 tanh 28 sqrt 29 erf 30 identity 31 asin 32 acos 33 atan 34 sinh 35 cosh
template <int OP, typename TI, typename TO>
__device__ __forceinline__ TO ew1_op(TI v, float a, float b) {
  if constexpr (OP == 0) {
    if constexpr (rtx_same<TO, unsigned char>::value) return (TO)(v != (TI)0);
    else return (TO)v;
  } else if constexpr (OP == 1) { return (TO)(-v);
  } else if constexpr (OP == 2) { return (TO)(v < (TI)0 ? (TI)(-v) : v);
  } else if constexpr (OP == 3) { return (TO)(v ? 0 : 1);
  } else if constexpr (OP == 17) { return (TO)((v > (TI)0) - (v < (TI)0));
  } else if constexpr (OP == 30) { return (TO)v;
  } else {
    const float f = (float)v;
    float r = f;
    if (OP == 4) r = (f != f) ? 1.f : 0.f;
    if (OP == 5) r = (fabsf(f) > 3.40282347e38f && ((f > 0.f && a != 0.f) || (f < 0.f && b != 0.f))) ? 1.f : 0.f;
    if (OP == 6) r = sinf(f);
    if (OP == 7) r = cosf(f);
    if (OP == 8) r = expf(f);
    if (OP == 9) r = logf(f);
    if (OP == 10) r = 1.f / f;
    if (OP == 11) r = floorf(f);
    if (OP == 12) r = ceilf(f);
    if (OP == 13) r = fmaxf(0.f, fminf(1.f, a * f + b));
    if (OP == 14) r = f * fmaxf(0.f, fminf(1.f, f * (1.f / 6.f) + 0.5f));
    if (OP == 15) r = f > 20.f ? f : log1pf(expf(f));
    if (OP == 16) r = f >= 0.f ? f : a * (expf(f) - 1.f);
    if (OP == 18) r = rintf(f);
    if (OP == 19) r = tanf(f);
    if (OP == 20) r = f / (1.f + fabsf(f));
    if (OP == 21) r = f * tanhf(f > 20.f ? f : log1pf(expf(f)));
    if (OP == 22) r = f > 0.f ? b * f : b * a * (expf(f) - 1.f);
    if (OP == 23) r = f >= 0.f ? f : a * (expf(f / a) - 1.f);
    if (OP == 24) r = f > a ? f : 0.f;
    if (OP == 25) r = fmaxf(f, 0.f);
    if (OP == 26) r = 1.f / (1.f + expf(-f));
    if (OP == 27) r = tanhf(f);
    if (OP == 28) r = sqrtf(f);
    if (OP == 29) r = erff(f);
    if (OP == 31) r = asinf(f);
    if (OP == 32) r = acosf(f);
    if (OP == 33) r = atanf(f);
    if (OP == 34) r = sinhf(f);
    if (OP == 35) r = coshf(f);
    if constexpr (rtx_same<TO, unsigned char>::value) return (TO)(r != 0.f);
    else return (TO)r;
  }
}

template <int OP, typename TI, typename TO>
__device__ void ew1(const void* __restrict__ xp, void* __restrict__ yp, long long n, float a, float b) {
  const TI* __restrict__ x = (const TI*)xp;
  TO* __restrict__ y = (TO*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = ew1_op<OP, TI, TO>(x[i], a, b);
}

// binary codes: 0 add 1 sub 2 mul 3 div 4 pow 5 max 6 min 7 mod (sign of the divisor) 8 fmod 9 and 10 or 11 xor
// 12 equal 13 less 14 greater 15 less-or-equal 16 greater-or-equal 17 prelu (b = slope)
// 18 shift left 19 shift right
template <int OP, typename TA, typename TB, typename TY>
__device__ __forceinline__ TY ew2_op(TA a, TB bv) {
  if constexpr (OP == 4) {
    return (TY)powf((float)a, (float)bv);
  } else if constexpr (OP == 8) {
    if constexpr (rtx_same<TA, float>::value) return (TY)fmodf(a, (float)bv);
    else return (TY)(bv == (TB)0 ? (TA)0 : (TA)(a % (TA)bv));
  } else if constexpr (OP == 7) {
    if constexpr (rtx_same<TA, float>::value) {
      float r = fmodf(a, (float)bv);
      if (r != 0.f && ((r < 0.f) != ((float)bv < 0.f))) r += (float)bv;
      return (TY)r;
    } else {
      if (bv == (TB)0) return (TY)0;
      TA r = a % (TA)bv;
      if (r != 0 && ((r < 0) != (bv < 0))) r += (TA)bv;
      return (TY)r;
    }
  } else if constexpr (OP == 18) { return (TY)(a << bv);
  } else if constexpr (OP == 19) { return (TY)(a >> bv);
  } else {
    const TA b = (TA)bv;
    if (OP == 0) return (TY)(a + b);
    if (OP == 1) return (TY)(a - b);
    if (OP == 2) return (TY)(a * b);
    if (OP == 3) return (TY)(b == (TA)0 && !rtx_same<TA, float>::value ? (TA)0 : a / b);
    if (OP == 5) return (TY)(a != a ? a : (b != b ? b : (a > b ? a : b)));
    if (OP == 6) return (TY)(a != a ? a : (b != b ? b : (a < b ? a : b)));
    if (OP == 9) return (TY)((a != (TA)0) && (b != (TA)0));
    if (OP == 10) return (TY)((a != (TA)0) || (b != (TA)0));
    if (OP == 11) return (TY)((a != (TA)0) != (b != (TA)0));
    if (OP == 12) return (TY)(a == b);
    if (OP == 13) return (TY)(a < b);
    if (OP == 14) return (TY)(a > b);
    if (OP == 15) return (TY)(a <= b);
    if (OP == 16) return (TY)(a >= b);
    if (OP == 17) return (TY)(a < (TA)0 ? a * b : a);
    return (TY)a;
  }
}

template <int OP, typename TA, typename TB, typename TY>
__device__ void ew2(const void* __restrict__ ap, const void* __restrict__ bp, void* __restrict__ yp, long long n, int nd,
                    I6 shape, I6 sa, I6 sb) {
  const TA* __restrict__ a = (const TA*)ap;
  const TB* __restrict__ b = (const TB*)bp;
  TY* __restrict__ y = (TY*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = ew2_op<OP, TA, TB, TY>(a[rtx_offset(i, nd, shape, sa)], b[rtx_offset(i, nd, shape, sb)]);
}

// Where(cond, x, y): a select of B-byte elements, all three inputs broadcast.
template <int B>
__device__ void where_b(const void* __restrict__ cp, const void* __restrict__ xp, const void* __restrict__ yp,
                        void* __restrict__ op, long long n, int nd, I6 shape, I6 sc, I6 sx, I6 sy) {
  typedef typename rtx_bytes<B>::T T;
  const unsigned char* __restrict__ c = (const unsigned char*)cp;
  const T* __restrict__ x = (const T*)xp;
  const T* __restrict__ y = (const T*)yp;
  T* __restrict__ o = (T*)op;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    o[i] = c[rtx_offset(i, nd, shape, sc)] ? x[rtx_offset(i, nd, shape, sx)] : y[rtx_offset(i, nd, shape, sy)];
}

// ---- moving elements of any size ---------------------------------------------------------------
template <int B>
__device__ void strided_copy_b(const void* __restrict__ xp, void* __restrict__ yp, long long n, int nd, I6 shape,
                               I6 sx, I6 sy, long long ox, long long oy) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ x = (const T*)xp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[oy + rtx_offset(i, nd, shape, sy)] = x[ox + rtx_offset(i, nd, shape, sx)];
}

template <int B>
__device__ void fill_b(void* __restrict__ yp, long long n, unsigned long long bits) {
  typedef typename rtx_bytes<B>::T T;
  T* __restrict__ y = (T*)yp;
  const T v = (T)bits;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
    y[i] = v;
}

template <typename TI>
__device__ __forceinline__ long long rtx_index(const void* idx, long long k, long long len) {
  long long t = (long long)((const TI*)idx)[k];
  return t < 0 ? t + len : t;
}

// Gather along an axis: data [outer, axis_len, inner], indices of any shape (nidx elements).
template <int B, typename TI>
__device__ void gather_b(const void* __restrict__ dp, const void* __restrict__ ip, void* __restrict__ yp, long long n,
                         int axis_len, int nidx, int inner) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ d = (const T*)dp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long in = i % inner, j = (i / inner) % nidx, o = i / ((long long)inner * nidx);
    y[i] = d[(o * axis_len + rtx_index<TI>(ip, j, axis_len)) * inner + in];
  }
}

// GatherElements: output has the indices' shape; the axis coordinate comes from the indices.
template <int B, typename TI>
__device__ void gather_elements_b(const void* __restrict__ dp, const void* __restrict__ ip, void* __restrict__ yp,
                                  long long n, int nd, I6 oshape, I6 dstride, int axis, int axis_len) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ d = (const T*)dp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, o = 0;
    for (int k = nd - 1; k >= 0; --k) {
      long long c = r % oshape.v[k];
      r /= oshape.v[k];
      if (k == axis) c = rtx_index<TI>(ip, i, axis_len);
      o += c * dstride.v[k];
    }
    y[i] = d[o];
  }
}

// Element offset of the index tuple idx[0..k) into dimensions kdim with strides kstride (a negative
// index counts from the end of its dimension): GatherND and ScatterND.
__device__ __forceinline__ long long nd_offset(const long long* __restrict__ idx, int k, const I6& kstride,
                                               const I6& kdim) {
  long long o = 0;
  for (int q = 0; q < k; ++q) {
    long long v = idx[q];
    if (v < 0) v += kdim.v[q];
    o += v * kstride.v[q];
  }
  return o;
}

// GatherND: rows j of the indices' last dimension (k values) pick data slices of `inner` elements.
template <int B>
__device__ void gather_nd_b(const void* __restrict__ dp, const long long* __restrict__ idx, void* __restrict__ yp,
                            long long n, int k, int inner, long long per_batch, long long batch_stride, I6 kstride,
                            I6 kdim) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ d = (const T*)dp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long j = i / inner, t = i - j * inner;
    y[i] = d[(j / per_batch) * batch_stride + nd_offset(idx + j * k, k, kstride, kdim) + t];
  }
}

// ScatterND (no reduction): y already holds a copy of data; rows j of updates go where the indices say.
template <int B>
__device__ void scatter_nd_b(const long long* __restrict__ idx, const void* __restrict__ up, void* __restrict__ yp,
                             long long n, int k, int inner, I6 kstride, I6 kdim) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ u = (const T*)up;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const long long j = i / inner, t = i - j * inner;
    y[nd_offset(idx + j * k, k, kstride, kdim) + t] = u[i];
  }
}

template <int B>
__device__ void tile_b(const void* __restrict__ xp, void* __restrict__ yp, long long n, int nd, I6 oshape, I6 xshape,
                       I6 xstride) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ x = (const T*)xp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, o = 0;
    for (int k = nd - 1; k >= 0; --k) {
      long long c = r % oshape.v[k];
      r /= oshape.v[k];
      o += (c % xshape.v[k]) * xstride.v[k];
    }
    y[i] = x[o];
  }
}

// Pad: MODE 0 constant (bits), 1 reflect, 2 edge, 3 wrap. `begin` may be negative (a crop).
template <int B, int MODE>
__device__ void pad_b(const void* __restrict__ xp, void* __restrict__ yp, long long n, int nd, I6 oshape, I6 xshape,
                      I6 xstride, I6 begin, unsigned long long bits) {
  typedef typename rtx_bytes<B>::T T;
  const T* __restrict__ x = (const T*)xp;
  T* __restrict__ y = (T*)yp;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, o = 0;
    bool inside = true;
    for (int k = nd - 1; k >= 0; --k) {
      long long c = r % oshape.v[k] - begin.v[k];
      r /= oshape.v[k];
      const long long L = xshape.v[k];
      if (c < 0 || c >= L) {
        if (MODE == 0) { inside = false; continue; }
        if (MODE == 2) c = c < 0 ? 0 : L - 1;
        if (MODE == 3) { c %= L; if (c < 0) c += L; }
        if (MODE == 1) {
          if (L == 1) { c = 0; } else {
            const long long period = 2 * (L - 1);
            c %= period;
            if (c < 0) c += period;
            if (c >= L) c = period - c;
          }
        }
      }
      o += c * xstride.v[k];
    }
    y[i] = inside ? x[o] : (T)bits;
  }
}

// ---- Resize ----------------------------------------------------------------------------------------
// COORD: 0 half_pixel 1 asymmetric 2 align_corners 3 pytorch_half_pixel 4 tf_half_pixel_for_nn
// NEAREST: 0 round_prefer_floor 1 round_prefer_ceil 2 floor 3 ceil
template <int COORD>
__device__ __forceinline__ float rtx_src(long long o, float scale, long long out_len, long long in_len) {
  if (COORD == 0) return ((float)o + 0.5f) / scale - 0.5f;
  if (COORD == 1) return (float)o / scale;
  if (COORD == 2) return out_len > 1 ? (float)o * (float)(in_len - 1) / (float)(out_len - 1) : 0.f;
  if (COORD == 3) return out_len > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.f;
  return ((float)o + 0.5f) / scale;
}

template <int NEAREST>
__device__ __forceinline__ long long rtx_nearest(float v) {
  if (NEAREST == 2) return (long long)floorf(v);
  if (NEAREST == 3) return (long long)ceilf(v);
  const float f = floorf(v), frac = v - f;
  if (frac == 0.5f) return NEAREST == 0 ? (long long)f : (long long)f + 1;
  return (long long)rintf(v);
}

// MODE 0 nearest (any dims), 1 linear (the last two dims; the others must keep their size)
template <int MODE, int COORD, int NEAREST>
__device__ void resize(const float* __restrict__ x, float* __restrict__ y, long long n, int nd, I6 oshape, I6 xshape,
                       F6 scale) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i;
    long long c[6];
    for (int k = nd - 1; k >= 0; --k) {
      c[k] = r % oshape.v[k];
      r /= oshape.v[k];
    }
    if (MODE == 0) {
      long long o = 0;
      for (int k = 0; k < nd; ++k) {
        long long s = c[k];
        if (oshape.v[k] != xshape.v[k] || scale.v[k] != 1.f) {
          s = rtx_nearest<NEAREST>(rtx_src<COORD>(c[k], scale.v[k], oshape.v[k], xshape.v[k]));
          s = s < 0 ? 0 : (s >= xshape.v[k] ? xshape.v[k] - 1 : s);
        }
        o = o * xshape.v[k] + s;
      }
      y[i] = x[o];
    } else {
      long long base = 0;
      for (int k = 0; k < nd - 2; ++k) base = base * xshape.v[k] + c[k];
      const int h = nd - 2, w = nd - 1;
      const long long H = xshape.v[h], W = xshape.v[w];
      float sy = rtx_src<COORD>(c[h], scale.v[h], oshape.v[h], H);
      float sx = rtx_src<COORD>(c[w], scale.v[w], oshape.v[w], W);
      sy = fminf(fmaxf(sy, 0.f), (float)(H - 1));
      sx = fminf(fmaxf(sx, 0.f), (float)(W - 1));
      const long long y0 = (long long)floorf(sy), x0 = (long long)floorf(sx);
      const long long y1 = y0 + 1 < H ? y0 + 1 : H - 1, x1 = x0 + 1 < W ? x0 + 1 : W - 1;
      const float wy = sy - (float)y0, wx = sx - (float)x0;
      const float* p = x + base * H * W;
      const float top = p[y0 * W + x0] * (1.f - wx) + p[y0 * W + x1] * wx;
      const float bot = p[y1 * W + x0] * (1.f - wx) + p[y1 * W + x1] * wx;
      y[i] = top * (1.f - wy) + bot * wy;
    }
  }
}

// ---- normalizations --------------------------------------------------------------------------------
// One block per row of `len` elements; y = (x - mean) / sqrt(var + eps) * scale[c] + bias[c], with the
// channel c = (row % rows_per_channel_group ...) given by: c0 = (row % G) * cpg, channel of element j =
// c0 + j / inner (InstanceNormalization: G = C, cpg = 1; GroupNormalization: cpg = C / G).
__device__ void group_norm(const float* __restrict__ x, const float* __restrict__ scale, const float* __restrict__ bias,
                           float* __restrict__ y, int G, int cpg, int inner, float eps, int per_group) {
  const int row = blockIdx.x, len = cpg * inner, g = row % G;
  const long long base = (long long)row * len;
  float rstd;
  const float mean = row_mean_rstd(x, base, len, eps, &rstd);
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    const int c = per_group ? g : g * cpg + i / inner;
    float t = (x[base + i] - mean) * rstd;
    if (scale) t *= scale[c];
    if (bias) t += bias[c];
    y[base + i] = t;
  }
}

// ---- reductions over [outer, len, inner] rows ------------------------------------------------------
// codes: 0 sum 1 mean 2 max 3 min 4 prod 5 l1 6 l2 7 sumsquare 8 logsumexp 9 logsum
template <int OP, typename T>
__device__ __forceinline__ T rtx_ident() {
  if constexpr (OP == 2) {
    if constexpr (rtx_same<T, float>::value) return RTX_NEG_INF; else return (T)(-9223372036854775807LL - 1);
  } else if constexpr (OP == 3) {
    if constexpr (rtx_same<T, float>::value) return -RTX_NEG_INF; else return (T)9223372036854775807LL;
  } else if constexpr (OP == 4) {
    return (T)1;
  } else {
    return (T)0;
  }
}

template <int OP, typename T>
__device__ __forceinline__ T rtx_combine(T a, T b) {
  if (OP == 2) return a > b ? a : b;
  if (OP == 3) return a < b ? a : b;
  if (OP == 4) return a * b;
  return a + b;
}

template <int OP, typename T>
__device__ T rtx_block_reduce(T v) {
  __shared__ T s[33];
  for (int o = 16; o > 0; o >>= 1) v = rtx_combine<OP, T>(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) s[wid] = v;
  __syncthreads();
  if (wid == 0) {
    T t = lane < nw ? s[lane] : rtx_ident<OP, T>();
    for (int o = 16; o > 0; o >>= 1) t = rtx_combine<OP, T>(t, __shfl_xor_sync(0xffffffffu, t, o));
    if (lane == 0) s[32] = t;
  }
  __syncthreads();
  return s[32];
}

template <int OP, typename T>
__device__ void reduce_t(const void* __restrict__ xp, void* __restrict__ yp, int len, int inner) {
  const T* __restrict__ x = (const T*)xp;
  T* __restrict__ y = (T*)yp;
  const int row = blockIdx.x, o = row / inner, in = row - o * inner;
  const long long base = (long long)o * len * inner + in;
  float fmax_ = RTX_NEG_INF;
  if (OP == 8) {   // logsumexp: the maximum first
    for (int i = threadIdx.x; i < len; i += blockDim.x) fmax_ = fmaxf(fmax_, (float)x[base + (long long)i * inner]);
    fmax_ = rtx_block_reduce<2, float>(fmax_);
  }
  constexpr int C = (OP == 1 || OP == 5 || OP == 6 || OP == 7 || OP == 8 || OP == 9) ? 0 : OP;
  T acc = rtx_ident<C, T>();
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    T v = x[base + (long long)i * inner];
    if (OP == 5) v = v < (T)0 ? (T)(-v) : v;
    if (OP == 6 || OP == 7) v = v * v;
    if (OP == 8) v = (T)expf((float)v - fmax_);
    acc = rtx_combine<C, T>(acc, v);
  }
  acc = rtx_block_reduce<C, T>(acc);
  if (threadIdx.x == 0) {
    T r = acc;
    if (OP == 1) r = (T)((float)acc / (float)len);
    if (OP == 6) r = (T)sqrtf((float)acc);
    if (OP == 8) r = (T)(logf((float)acc) + fmax_);
    if (OP == 9) r = (T)logf((float)acc);
    y[row] = r;
  }
}

// ArgMax (MAX = 1) / ArgMin: index of the first (or, with LAST, the last) extreme along the row.
template <int MAX, typename T>
__device__ void arg_reduce(const void* __restrict__ xp, long long* __restrict__ y, int len, int inner, int last) {
  const T* __restrict__ x = (const T*)xp;
  const int row = blockIdx.x, o = row / inner, in = row - o * inner;
  const long long base = (long long)o * len * inner + in;
  if (threadIdx.x != 0) return;
  T best = x[base];
  long long at = 0;
  for (int i = 1; i < len; ++i) {
    T v = x[base + (long long)i * inner];
    bool better = MAX ? (last ? v >= best : v > best) : (last ? v <= best : v < best);
    if (better) { best = v; at = i; }
  }
  y[row] = at;
}

template <typename T>
__device__ void cumsum_t(const void* __restrict__ xp, void* __restrict__ yp, long long rows, int len, int inner,
                         int exclusive, int reverse) {
  const T* __restrict__ x = (const T*)xp;
  T* __restrict__ y = (T*)yp;
  for (long long row = blockIdx.x * (long long)blockDim.x + threadIdx.x; row < rows;
       row += (long long)gridDim.x * blockDim.x) {
    const long long o = row / inner, in = row - o * inner, base = o * len * inner + in;
    T acc = (T)0;
    for (int s = 0; s < len; ++s) {
      const int i = reverse ? len - 1 - s : s;
      const long long at = base + (long long)i * inner;
      const T v = x[at];
      if (exclusive) { y[at] = acc; acc += v; } else { acc += v; y[at] = acc; }
    }
  }
}

// ---- ConvTranspose 2-D (gather form: each output sums the inputs that map onto it) -----------------
__device__ void conv_transpose2d(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ bias, float* __restrict__ y, int N, int C, int H, int W,
                                 int OC, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh,
                                 int dw, int G) {
  const int Cg = C / G, OCg = OC / G;
  const long long total = (long long)N * OC * OH * OW;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
    const Nchw o = nchw_of(i, OC, OH, OW);
    const int ow = o.w, oh = o.h, oc = o.c, n = o.n;
    int g = oc / OCg, ocg = oc - g * OCg;
    float acc = bias ? bias[oc] : 0.f;
    for (int kh = 0; kh < KH; ++kh) {
      int th = oh + ph - kh * dh;
      if (th < 0 || th % sh) continue;
      int ih = th / sh;
      if (ih >= H) continue;
      for (int kw = 0; kw < KW; ++kw) {
        int tw = ow + pw - kw * dw;
        if (tw < 0 || tw % sw) continue;
        int iw = tw / sw;
        if (iw >= W) continue;
        for (int c = 0; c < Cg; ++c) {
          const int ci = g * Cg + c;
          acc = fmaf(x[(((long long)n * C + ci) * H + ih) * W + iw], w[(((long long)ci * OCg + ocg) * KH + kh) * KW + kw],
                     acc);
        }
      }
    }
    y[i] = acc;
  }
}
"""

_COPY = "const void* x, void* y, long long n, int nd, I6 shape, I6 sx, I6 sy, long long ox, long long oy"
OPS_FAMILIES: dict[str, str] = {
    "ew1": "const void* x, void* y, long long n, float a, float b",
    "ew2": "const void* a, const void* b, void* y, long long n, int nd, I6 shape, I6 sa, I6 sb",
    "where_b": "const void* c, const void* x, const void* y, void* o, long long n, int nd, I6 shape, I6 sc, I6 sx, I6 sy",
    "strided_copy_b": _COPY,
    "fill_b": "void* y, long long n, unsigned long long bits",
    "gather_b": "const void* d, const void* i, void* y, long long n, int axis_len, int nidx, int inner",
    "gather_elements_b": ("const void* d, const void* i, void* y, long long n, int nd, I6 oshape, I6 dstride, int axis, "
                          "int axis_len"),
    "gather_nd_b": ("const void* d, const long long* idx, void* y, long long n, int k, int inner, long long per_batch, "
                    "long long batch_stride, I6 kstride, I6 kdim"),
    "scatter_nd_b": "const long long* idx, const void* u, void* y, long long n, int k, int inner, I6 kstride, I6 kdim",
    "tile_b": "const void* x, void* y, long long n, int nd, I6 oshape, I6 xshape, I6 xstride",
    "pad_b": ("const void* x, void* y, long long n, int nd, I6 oshape, I6 xshape, I6 xstride, I6 begin, "
              "unsigned long long bits"),
    "resize": "const float* x, float* y, long long n, int nd, I6 oshape, I6 xshape, F6 scale",
    "group_norm": ("const float* x, const float* scale, const float* bias, float* y, int G, int cpg, int inner, "
                   "float eps, int per_group"),
    "reduce_t": "const void* x, void* y, int len, int inner",
    "arg_reduce": "const void* x, long long* y, int len, int inner, int last",
    "cumsum_t": "const void* x, void* y, long long rows, int len, int inner, int exclusive, int reverse",
    "conv_transpose2d": ("const float* x, const float* w, const float* bias, float* y, int N, int C, int H, int W, "
                         "int OC, int OH, int OW, int KH, int KW, int sh, int sw, int ph, int pw, int dh, int dw, int G"),
}
#: which template arguments are element type codes ("t"), plain integers ("i")
OPS_TEMPLATE_KINDS: dict[str, str] = {
    "ew1": "itt", "ew2": "ittt", "where_b": "i", "strided_copy_b": "i", "fill_b": "i", "gather_b": "it",
    "gather_elements_b": "it", "gather_nd_b": "i", "scatter_nd_b": "i", "tile_b": "i", "pad_b": "ii",
    "resize": "iii", "reduce_t": "it", "arg_reduce": "it", "cumsum_t": "t",
}
#: families whose kernels run one block per row and need a power-of-two block of at most 256 threads
ROW_FAMILIES = frozenset({"group_norm", "reduce_t"})
