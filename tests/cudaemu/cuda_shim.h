// cuda_shim.h - compile CUDA C device code (an NVRTC program) as C++17 with g++ and run it on the CPU.
//
// Test support for rtxpack's nvrtc backend (tests/cudaemu); not part of the library. emu.py
// compiles `#include "cuda_shim.h"` + program source + generated launchers into a shared
// library. The execution model is CUDA's, emulated exactly where kernels can observe it:
//
//   * grid   - blocks run one after another (blockIdx in x, then y, then z order) on the calling
//              OS thread; one launch at a time per loaded program (a mutex);
//   * block  - every CUDA thread is a fiber with its own stack (a few-instruction context switch
//              on x86-64, ucontext elsewhere), all fibers of a block on one OS thread. A fiber runs
//              until it blocks (barrier / warp collective) or exits; the scheduler then resumes
//              the next runnable fiber in thread-index order (or reverse, or random: see
//              rtx_emu_set_schedule - results must not depend on it, races usually do).
//   * __shared__ - `static`: one copy per kernel, shared by the threads of the (single) running
//              block. NOT zeroed between blocks (CUDA leaves it undefined too).
//   * __syncthreads() - a real barrier over the block's live threads (threads that have exited
//              no longer count, as on sm_70+). Threads that cannot all proceed = deadlock: the
//              launch returns an error (no hang).
//   * warps  - lanes 32*k..32*k+31 of the linearized thread index. Every warp collective
//              (__shfl*_sync, __ballot/__any/__all_sync, __syncwarp, the mma/ldmatrix helpers) is a
//              barrier over the lanes in `mask` that are still alive: each lane deposits its
//              operand in a per-warp exchange slot, the last lane to arrive computes every lane's
//              result, then all of them resume. Lanes really exchange values; a lane that reads an
//              inactive/exited lane gets its own value back (undefined in CUDA).
//   * memory - device pointers are host pointers. Global atomics are real (__atomic builtins).
//   * errors - a deadlock, __trap(), a warp collective that needs all 32 lanes (mma, ldmatrix)
//              met by fewer, a launch beyond CUDA's grid/block limits or the kernel's
//              __launch_bounds__: the launch fails (launch_<entry> returns -1, the message is in
//              rtx_emu_last_error(); EmuError in Python), the failing thread stops where it is,
//              the rest of the block is abandoned, the program stays usable.
//   * __CUDA_ARCH__ is 900 (sm_90), so arch-guarded device code takes its newest path.
//
// What a kernel may use: the qualifiers (__global__, __device__, __host__, __forceinline__,
// __noinline__, __restrict__, __launch_bounds__(...), __align__(n), __shared__, __constant__);
// threadIdx/blockIdx/blockDim/gridDim/warpSize; __syncthreads, __syncwarp, __threadfence*;
// __shfl_sync/_xor/_up/_down (any 1/2/4/8-byte type, with width), __ballot/__any/__all_sync,
// __activemask; atomicAdd/Sub/Max/Min/Exch/CAS (int, unsigned, long long, unsigned long long,
// float; atomicAdd double; atomicMax/Min on float is an emulator extension); the float math of
// <cmath> plus rsqrtf, __expf, __logf, __powf, __sinf, __cosf, __fdividef, __frcp_rn, __saturatef,
// __fmaf_rn, __int_as_float & co, __popc/__clz/__ffs/__brev; min/max for every arithmetic mix;
// vector types (char4, uchar4, short2, ushort2, int2/3/4, uint2/3/4, float1/2/3/4, double2,
// longlong2) with make_*; __half (= GCC _Float16) and __half2 with the usual conversions and
// arithmetic; nvcuda::wmma (see below); the tensor-core helpers of the backend (kernels_tc.MMA_SOURCE), whose
// emulator branch calls rtx_emu::mma_m16n8k16_f16f32 / rtx_emu::ldmatrix. `#include
// <cuda_fp16.h>` and `#include <mma.h>` resolve to this file (tests/cudaemu/include).
//
// Not emulated: dynamic shared memory (extern __shared__), cooperative groups, device printf
// ordering guarantees, texture/surface objects, clock()/clock64(), memory-model weakness
// (everything is sequentially consistent), independent thread scheduling inside a warp (a
// warp-synchronous kernel that omits __syncwarp still gets lockstep-free fiber order: it is
// a bug the emulator may or may not expose).
#pragma once
#define RTX_EMULATOR 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <pthread.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// ------------------------------------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define __CUDA_ARCH__ 900

// ------------------------------------------------------------------------------------------ vector types
#define RTX_VEC2(N, T, A) struct __attribute__((aligned(A))) N##2 { T x, y; }; \
  static inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define RTX_VEC3(N, T) struct N##3 { T x, y, z; }; \
  static inline N##3 make_##N##3(T x, T y, T z) { return N##3{x, y, z}; }
#define RTX_VEC4(N, T, A) struct __attribute__((aligned(A))) N##4 { T x, y, z, w; }; \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
struct float1 { float x; };
static inline float1 make_float1(float x) { return float1{x}; }
RTX_VEC2(char, signed char, 2) RTX_VEC4(char, signed char, 4)
RTX_VEC2(uchar, unsigned char, 2) RTX_VEC4(uchar, unsigned char, 4)
RTX_VEC2(short, short, 4) RTX_VEC2(ushort, unsigned short, 4)
RTX_VEC2(int, int, 8) RTX_VEC3(int, int) RTX_VEC4(int, int, 16)
RTX_VEC2(uint, unsigned, 8) RTX_VEC3(uint, unsigned) RTX_VEC4(uint, unsigned, 16)
RTX_VEC2(float, float, 8) RTX_VEC3(float, float) RTX_VEC4(float, float, 16)
RTX_VEC2(double, double, 16) RTX_VEC2(longlong, long long, 16)
#undef RTX_VEC2
#undef RTX_VEC3
#undef RTX_VEC4

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

// the CUDA builtins: plain globals (a launch holds the module's lock and runs on one OS thread);
// the block scheduler sets threadIdx before it resumes a fiber
static uint3 threadIdx;
static uint3 blockIdx;
static dim3 blockDim;
static dim3 gridDim;
static constexpr int warpSize = 32;

// ------------------------------------------------------------------------------------------ bit casts, math
template <class To, class From> static inline To rtx_bit_cast(From f) {
  static_assert(sizeof(To) == sizeof(From), "bit cast of different sizes");
  To t;
  __builtin_memcpy(&t, &f, sizeof(To));
  return t;
}
static inline float __int_as_float(int x) { return rtx_bit_cast<float>(x); }
static inline int __float_as_int(float x) { return rtx_bit_cast<int>(x); }
static inline float __uint_as_float(unsigned x) { return rtx_bit_cast<float>(x); }
static inline unsigned __float_as_uint(float x) { return rtx_bit_cast<unsigned>(x); }
static inline double __longlong_as_double(long long x) { return rtx_bit_cast<double>(x); }
static inline long long __double_as_longlong(double x) { return rtx_bit_cast<long long>(x); }

static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
// glibc's math.h declares these reserved names itself: macros, so the CUDA meaning wins
#define __expf(x) expf(x)
#define __logf(x) logf(x)
#define __powf(a, b) powf(a, b)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : (x == x ? x : 0.f)); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
template <class T> static inline T __ldg(const T* p) { return *p; }

// CUDA's min/max are overloaded for every arithmetic type (and mixes, via the usual conversions)
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
static inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point<C>::value) return std::fmin((C)a, (C)b);
  else return (C)a < (C)b ? (C)a : (C)b;
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
static inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point<C>::value) return std::fmax((C)a, (C)b);
  else return (C)a < (C)b ? (C)b : (C)a;
}

// ------------------------------------------------------------------------------------------ half precision
// __half is GCC's _Float16 (IEEE binary16, round-to-nearest-even conversions, like cuda_fp16).
// Single operations are computed in double and rounded once (exact for + - *).
typedef _Float16 __half;
typedef __half half;
struct __attribute__((aligned(4))) __half2 { __half x, y; };
typedef __half2 half2;
static inline __half __float2half(float f) { return (__half)f; }
static inline __half __float2half_rn(float f) { return (__half)f; }
static inline float __half2float(__half h) { return (float)h; }
static inline __half __int2half_rn(int i) { return (__half)(float)i; }
static inline unsigned short __half_as_ushort(__half h) { return rtx_bit_cast<unsigned short>(h); }
static inline short __half_as_short(__half h) { return rtx_bit_cast<short>(h); }
static inline __half __ushort_as_half(unsigned short u) { return rtx_bit_cast<__half>(u); }
static inline __half __short_as_half(short u) { return rtx_bit_cast<__half>(u); }
static inline __half __hadd(__half a, __half b) { return (__half)((double)a + (double)b); }
static inline __half __hsub(__half a, __half b) { return (__half)((double)a - (double)b); }
static inline __half __hmul(__half a, __half b) { return (__half)((double)a * (double)b); }
static inline __half __hdiv(__half a, __half b) { return (__half)((double)a / (double)b); }
static inline __half __hfma(__half a, __half b, __half c) { return (__half)((double)a * (double)b + (double)c); }
static inline __half __hneg(__half a) { return (__half)(-(float)a); }
static inline __half __habs(__half a) { return (__half)fabsf((float)a); }
static inline __half __hmax(__half a, __half b) { return (float)a < (float)b ? b : a; }
static inline __half __hmin(__half a, __half b) { return (float)b < (float)a ? b : a; }
static inline bool __heq(__half a, __half b) { return (float)a == (float)b; }
static inline bool __hlt(__half a, __half b) { return (float)a < (float)b; }
static inline bool __hgt(__half a, __half b) { return (float)a > (float)b; }
static inline bool __hisnan(__half a) { return (float)a != (float)a; }
static inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
static inline __half2 __half2half2(__half a) { return __half2{a, a}; }
static inline __half2 __float2half2_rn(float f) { return __half2{(__half)f, (__half)f}; }
static inline __half2 __floats2half2_rn(float a, float b) { return __half2{(__half)a, (__half)b}; }
static inline __half2 __float22half2_rn(float2 f) { return __half2{(__half)f.x, (__half)f.y}; }
static inline float2 __half22float2(__half2 h) { return float2{(float)h.x, (float)h.y}; }
static inline float __low2float(__half2 h) { return (float)h.x; }
static inline float __high2float(__half2 h) { return (float)h.y; }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }
static inline __half2 __hadd2(__half2 a, __half2 b) { return __half2{__hadd(a.x, b.x), __hadd(a.y, b.y)}; }
static inline __half2 __hsub2(__half2 a, __half2 b) { return __half2{__hsub(a.x, b.x), __hsub(a.y, b.y)}; }
static inline __half2 __hmul2(__half2 a, __half2 b) { return __half2{__hmul(a.x, b.x), __hmul(a.y, b.y)}; }
static inline __half2 __hfma2(__half2 a, __half2 b, __half2 c) { return __half2{__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }

// ------------------------------------------------------------------------------------------ the runtime
namespace rtx_emu {

typedef void (*Thunk)(void* closure);
enum FiberState { F_RUNNABLE, F_WAIT_BAR, F_WAIT_WARP, F_DONE, F_PARKED };
enum WarpKind { W_SYNC, W_SHFL, W_VOTE, W_MMA16816, W_LDMATRIX };
static constexpr int kMaxThreads = 1024;
static constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  void* sp;          // saved stack pointer (x86-64) while switched out
  char* stack;       // mmap'ed stack (lowest page is a guard page)
  int lin;           // linear thread index in the block
  uint3 idx;         // threadIdx
  int state;
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
};

struct WarpSlot {      // one lane's operand and result of a warp collective
  int kind, src, flags;
  unsigned mask;
  unsigned long long val;
  const void* ptr;
  unsigned in[10];
  unsigned out[4];
};
struct WarpState {
  unsigned arrived;    // lanes waiting in a collective
  unsigned live;       // lanes that exist and have not exited
  WarpSlot slot[32];
};

struct Worker {
  Fiber* fibers = nullptr;
  int nfibers = 0;
  void* sched_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t sched_uc;
#endif
  WarpState warps[kMaxThreads / 32];
  int nthreads = 0, live = 0, bar_arrived = 0;
  int order[kMaxThreads];
  Fiber* cur = nullptr;
  Thunk fn = nullptr;
  void* closure = nullptr;
  const char* error = nullptr;
};

static Worker* g_worker;
// the order in which the scheduler resumes runnable threads, each round (between barriers):
// 0 thread-index order, 1 reverse, 2 random (xorshift, seeded by rtx_emu_set_schedule). Kernel
// results must not depend on it; a race between threads of a block usually shows up under 1 or 2.
static int g_schedule = 0;
static unsigned long long g_rng = 0x9E3779B97F4A7C15ull;
static pthread_mutex_t g_launch_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_error[512];

// ------------------------------------------------------------------ context switch
#if defined(__x86_64__)
extern "C" void rtx_emu_switch(void** save_sp, void* new_sp);
extern "C" void rtx_emu_trampoline();
// callee-saved registers + mxcsr/x87 control word on the old stack, swap stacks, restore
asm(R"(
  .text
  .p2align 4
  .hidden rtx_emu_switch
  .type rtx_emu_switch,@function
rtx_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size rtx_emu_switch, .-rtx_emu_switch
  .p2align 4
  .hidden rtx_emu_trampoline
  .type rtx_emu_trampoline,@function
rtx_emu_trampoline:
  movq %rbx, %rdi
  call rtx_emu_fiber_main@PLT
  ud2
  .size rtx_emu_trampoline, .-rtx_emu_trampoline
)");
#endif

extern "C" __attribute__((visibility("hidden"), used, noreturn)) void rtx_emu_fiber_main(Fiber* f);
static void thread_exit(Worker* w, Fiber* f);

static inline void to_scheduler(Worker* w, Fiber* f) {
  asm volatile("" ::: "memory");             // shared memory is re-read after every barrier
#if defined(__x86_64__)
  rtx_emu_switch(&f->sp, w->sched_sp);
#else
  swapcontext(&f->uc, &w->sched_uc);
#endif
  asm volatile("" ::: "memory");
}
static inline void to_fiber(Worker* w, Fiber* f) {
#if defined(__x86_64__)
  rtx_emu_switch(&w->sched_sp, f->sp);
#else
  swapcontext(&w->sched_uc, &f->uc);
#endif
}

#if !defined(__x86_64__)
static void fiber_entry_uc(unsigned hi, unsigned lo) {
  rtx_emu_fiber_main((Fiber*)(((uintptr_t)hi << 32) | lo));
}
#endif

// (re)start a fiber at rtx_emu_fiber_main(f), e.g. after a launch was abandoned mid-block
static void fiber_reset(Fiber* f) {
  char* top = f->stack + kStackBytes;
#if defined(__x86_64__)
  uintptr_t* sp = (uintptr_t*)(((uintptr_t)top) & ~(uintptr_t)15);
  *--sp = 0;                                 // padding: rsp % 16 == 0 after the first switch's
  *--sp = 0;                                 // `ret`, so rtx_emu_fiber_main is entered ABI-aligned
  *--sp = (uintptr_t)&rtx_emu_trampoline;    // return address of the first switch
  *--sp = 0;                                 // rbp
  *--sp = (uintptr_t)f;                      // rbx -> first argument of rtx_emu_fiber_main
  *--sp = 0; *--sp = 0; *--sp = 0; *--sp = 0; // r12..r15
  uint32_t csr[2] = {0x1F80u, 0x037Fu};      // default mxcsr, x87 control word
  *--sp = ((uintptr_t)csr[1] << 32) | csr[0];
  f->sp = sp;
#else
  getcontext(&f->uc);
  f->uc.uc_stack.ss_sp = f->stack + 4096;
  f->uc.uc_stack.ss_size = kStackBytes - 4096;
  f->uc.uc_link = nullptr;
  uintptr_t p = (uintptr_t)f;
  makecontext(&f->uc, (void (*)())fiber_entry_uc, 2, (unsigned)(p >> 32), (unsigned)(p & 0xffffffffu));
#endif
}

static bool ensure_fibers(Worker* w, int n) {
  if (!w->fibers) {
    w->fibers = (Fiber*)calloc(kMaxThreads, sizeof(Fiber));
    if (!w->fibers) return false;
  }
  for (; w->nfibers < n; ++w->nfibers) {
    Fiber* f = &w->fibers[w->nfibers];
    void* m = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return false;
    mprotect(m, 4096, PROT_NONE);           // guard page: a stack overflow faults instead of corrupting
    f->stack = (char*)m;
    fiber_reset(f);
  }
  return true;
}

// the launch fails: the calling fiber stops here for good (run_block abandons the block)
static void fail_and_park(Worker* w, const char* msg);

static void fail(Worker* w, const char* msg) {
  if (!w->error) {
    snprintf(g_error, sizeof g_error, "%s (block %u,%u,%u thread %u,%u,%u)", msg, blockIdx.x, blockIdx.y, blockIdx.z,
             w->cur ? w->cur->idx.x : 0u, w->cur ? w->cur->idx.y : 0u, w->cur ? w->cur->idx.z : 0u);
    w->error = g_error;
  }
}

// ------------------------------------------------------------------ block barrier
static void release_barrier_if_complete(Worker* w) {
  if (w->bar_arrived == 0 || w->bar_arrived < w->live) return;
  for (int t = 0; t < w->nthreads; ++t)
    if (w->fibers[t].state == F_WAIT_BAR) w->fibers[t].state = F_RUNNABLE;
  w->bar_arrived = 0;
}

static void syncthreads() {
  Worker* w = g_worker;
  Fiber* f = w->cur;
  ++w->bar_arrived;
  if (w->bar_arrived >= w->live) {           // last to arrive: release everyone, keep running
    release_barrier_if_complete(w);
    return;
  }
  f->state = F_WAIT_BAR;
  to_scheduler(w, f);
}

// ------------------------------------------------------------------ warp collectives
static inline unsigned short h16(unsigned word, int hi) { return (unsigned short)(hi ? word >> 16 : word & 0xffffu); }
static inline float hbits2float(unsigned short b) { return (float)rtx_bit_cast<__half>(b); }

// D = A x B + C for mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32, operands gathered from
// the 32 lanes' fragments with the PTX ISA layout (section "Matrix Fragments for mma.m16n8k16
// with floating point type"): groupID = lane >> 2, threadID_in_group = lane % 4;
//   A (16x16, 8 halves in 4 regs, element i in reg i/2, low half first):
//     row = groupID (+8 for i in {2,3,6,7}), col = 2*threadID_in_group + (i & 1) (+8 for i >= 4)
//   B (16x8, 4 halves in 2 regs): row(k) = 2*threadID_in_group + (i & 1) (+8 for i >= 2), col = groupID
//   C, D (16x8, 4 floats): row = groupID (+8 for i >= 2), col = 2*threadID_in_group + (i & 1)
static void complete_mma16816(WarpState& ws) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const WarpSlot& s = ws.slot[l];
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) {
      const int row = g + ((i & 2) ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
      A[row][col] = hbits2float(h16(s.in[i >> 1], i & 1));
    }
    for (int i = 0; i < 4; ++i) {
      const int k = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
      B[k][g] = hbits2float(h16(s.in[4 + (i >> 1)], i & 1));
    }
    for (int i = 0; i < 4; ++i) C[g + (i >= 2 ? 8 : 0)][2 * t + (i & 1)] = rtx_bit_cast<float>(s.in[6 + i]);
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      float acc = C[row][col];               // half x half products are exact in float
      for (int k = 0; k < 16; ++k) acc = fmaf(A[row][k], B[k][col], acc);
      ws.slot[l].out[i] = rtx_bit_cast<unsigned>(acc);
    }
  }
}

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: matrix j's row r is at the address
// given by lane 8*j + r; lane l receives, in register j, the two 16-bit elements
// (row l/4, cols 2*(l%4), 2*(l%4)+1) of matrix j (low half first), or with .trans the elements
// (rows 2*(l%4), 2*(l%4)+1, col l/4).
static void complete_ldmatrix(WarpState& ws, unsigned need) {
  int num = 0, trans = 0;
  for (int l = 0; l < 32; ++l)
    if (need >> l & 1) { num = ws.slot[l].src; trans = ws.slot[l].flags; break; }
  for (int l = 0; l < 32; ++l) {
    if (!(need >> l & 1)) continue;
    for (int j = 0; j < num; ++j) {
      unsigned short e[2];
      for (int h = 0; h < 2; ++h) {
        const int r = trans ? 2 * (l & 3) + h : (l >> 2), c = trans ? (l >> 2) : 2 * (l & 3) + h;
        const unsigned short* row = (const unsigned short*)ws.slot[8 * j + r].ptr;
        e[h] = row[c];
      }
      ws.slot[l].out[j] = (unsigned)e[0] | ((unsigned)e[1] << 16);
    }
  }
}

static void complete_warp(Worker* w, WarpState& ws, unsigned need) {
  const int kind = ws.slot[__builtin_ctz(need)].kind;
  if (kind == W_SHFL) {
    for (int l = 0; l < 32; ++l) {
      if (!(need >> l & 1)) continue;
      WarpSlot& s = ws.slot[l];
      const int src = s.src;
      s.out[2] = (unsigned)(src >= 0 && src < 32 && (need >> src & 1) ? ws.slot[src].val : s.val);
      s.out[3] = (unsigned)((src >= 0 && src < 32 && (need >> src & 1) ? ws.slot[src].val : s.val) >> 32);
    }
  } else if (kind == W_VOTE) {
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
      if ((need >> l & 1) && ws.slot[l].val) ballot |= 1u << l;
    for (int l = 0; l < 32; ++l)
      if (need >> l & 1) ws.slot[l].out[0] = ballot;
  } else if (kind == W_MMA16816) {
    if (need != 0xffffffffu) fail(w, "mma.m16n8k16 needs all 32 lanes of the warp");
    else complete_mma16816(ws);
  } else if (kind == W_LDMATRIX) {
    if (need != 0xffffffffu) fail(w, "ldmatrix needs all 32 lanes of the warp");
    else complete_ldmatrix(ws, need);
  }
  for (int l = 0; l < 32; ++l)
    if ((need >> l & 1) && ws.slot[l].kind != kind) fail(w, "lanes of a warp meet in different warp collectives");
}

// complete every collective of warp `wi` whose participants have all arrived; true if one did
static bool try_complete_warp(Worker* w, int wi) {
  WarpState& ws = w->warps[wi];
  bool any = false;
  while (ws.arrived) {
    const int first = __builtin_ctz(ws.arrived);
    const unsigned need = ws.slot[first].mask & ws.live;
    if ((ws.arrived & need) != need || !need) break;
    complete_warp(w, ws, need);
    ws.arrived &= ~need;
    for (int l = 0; l < 32; ++l)
      if ((need >> l & 1) && w->fibers[wi * 32 + l].state == F_WAIT_WARP) w->fibers[wi * 32 + l].state = F_RUNNABLE;
    any = true;
  }
  return any;
}

// deposit this lane's operand (already in its slot), wait until the collective completes
static WarpSlot& warp_collective(int kind, unsigned mask) {
  Worker* w = g_worker;
  Fiber* f = w->cur;
  const int wi = f->lin >> 5, lane = f->lin & 31;
  WarpState& ws = w->warps[wi];
  WarpSlot& s = ws.slot[lane];
  s.kind = kind;
  s.mask = mask | (1u << lane);
  ws.arrived |= 1u << lane;
  try_complete_warp(w, wi);
  if (w->error) fail_and_park(w, w->error);
  if (ws.arrived >> lane & 1) {
    f->state = F_WAIT_WARP;
    to_scheduler(w, f);
  }
  return s;
}
static inline WarpSlot& my_slot() {
  Worker* w = g_worker;
  return w->warps[w->cur->lin >> 5].slot[w->cur->lin & 31];
}
static inline unsigned lane_id() { return (unsigned)g_worker->cur->lin & 31u; }

template <class T> static inline T shfl(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "__shfl*_sync of a type wider than 8 bytes");
  WarpSlot& s = my_slot();
  s.val = 0;
  __builtin_memcpy(&s.val, &v, sizeof(T));
  s.src = src;
  warp_collective(W_SHFL, mask);
  unsigned long long r = (unsigned long long)s.out[2] | ((unsigned long long)s.out[3] << 32);
  T out;
  __builtin_memcpy(&out, &r, sizeof(T));
  return out;
}

static inline unsigned vote(unsigned mask, int pred) {
  WarpSlot& s = my_slot();
  s.val = pred != 0;
  warp_collective(W_VOTE, mask);
  return s.out[0];
}

// the tensor-core helpers used by kernels_tc.MMA_SOURCE's emulator branch
static inline void mma_m16n8k16_f16f32(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
  WarpSlot& s = my_slot();
  for (int i = 0; i < 4; ++i) s.in[i] = a[i];
  s.in[4] = b[0];
  s.in[5] = b[1];
  for (int i = 0; i < 4; ++i) s.in[6 + i] = rtx_bit_cast<unsigned>(c[i]);
  warp_collective(W_MMA16816, 0xffffffffu);
  for (int i = 0; i < 4; ++i) d[i] = rtx_bit_cast<float>(s.out[i]);
}
static inline void ldmatrix(unsigned* r, int num, bool trans, const void* row_ptr) {
  WarpSlot& s = my_slot();
  s.ptr = row_ptr;
  s.src = num;
  s.flags = trans;
  warp_collective(W_LDMATRIX, 0xffffffffu);
  for (int j = 0; j < num; ++j) r[j] = s.out[j];
}

static void fail_and_park(Worker* w, const char* msg) {
  fail(w, msg);
  Fiber* f = w->cur;
  f->state = F_PARKED;
  for (;;) to_scheduler(w, f);                 // never resumed: fiber_reset() restarts it
}

static void thread_exit(Worker* w, Fiber* f) {
  f->state = F_DONE;
  --w->live;
  WarpState& ws = w->warps[f->lin >> 5];
  ws.live &= ~(1u << (f->lin & 31));
  try_complete_warp(w, f->lin >> 5);
  release_barrier_if_complete(w);
}

extern "C" void rtx_emu_fiber_main(Fiber* f) {
  for (;;) {                                  // a fiber runs one CUDA thread per block, then waits
    Worker* w = g_worker;
    w->fn(w->closure);
    thread_exit(w, f);
    to_scheduler(w, f);
  }
}

// ------------------------------------------------------------------ launch
static int run_block(Worker* w, dim3 block) {
  const int n = w->nthreads;
  for (int t = 0; t < n; ++t) w->fibers[t].state = F_RUNNABLE;
  for (int wi = 0; wi < (n + 31) / 32; ++wi) {
    const int lanes = n - wi * 32 >= 32 ? 32 : n - wi * 32;
    w->warps[wi].live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    w->warps[wi].arrived = 0;
  }
  w->live = n;
  w->bar_arrived = 0;
  while (w->live > 0 && !w->error) {
    bool progress = false;
    if (g_schedule == 2) {                     // a fresh random order for every round
      for (int t = 0; t < n; ++t) w->order[t] = t;
      for (int t = n - 1; t > 0; --t) {
        g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
        const int j = (int)(g_rng % (unsigned long long)(t + 1)), tmp = w->order[t];
        w->order[t] = w->order[j], w->order[j] = tmp;
      }
    }
    for (int k = 0; k < n && !w->error; ++k) {
      const int t = g_schedule == 0 ? k : g_schedule == 1 ? n - 1 - k : w->order[k];
      Fiber* f = &w->fibers[t];
      if (f->state != F_RUNNABLE) continue;
      w->cur = f;
      threadIdx = f->idx;
      to_fiber(w, f);
      progress = true;
    }
    if (!progress && w->live > 0) {
      int bar = 0, warp = 0;
      for (int t = 0; t < n; ++t) bar += w->fibers[t].state == F_WAIT_BAR, warp += w->fibers[t].state == F_WAIT_WARP;
      snprintf(g_error, sizeof g_error,
               "deadlock in block (%u,%u,%u): %d threads wait at __syncthreads, %d in warp collectives, %d exited",
               blockIdx.x, blockIdx.y, blockIdx.z, bar, warp, n - w->live);
      w->error = g_error;
    }
  }
  w->cur = nullptr;
  if (w->error) {                              // abandon the block: restart every unfinished fiber
    for (int t = 0; t < n; ++t)
      if (w->fibers[t].state != F_DONE) fiber_reset(&w->fibers[t]);
    return -1;
  }
  return 0;
}

static Worker* worker() {
  if (!g_worker) g_worker = new Worker();
  return g_worker;
}

static int launch_error(const char* why, dim3 grid, dim3 block) {
  Worker* w = worker();
  snprintf(g_error, sizeof g_error, "invalid launch, %s: grid (%u,%u,%u) block (%u,%u,%u)", why, grid.x, grid.y, grid.z,
           block.x, block.y, block.z);
  w->error = g_error;
  return -1;
}

static int run_grid_locked(dim3 grid, dim3 block, Thunk fn, void* closure);
// one launch at a time per loaded program (ctypes releases the GIL): blocks and fibers share globals
static int run_grid(dim3 grid, dim3 block, Thunk fn, void* closure) {
  pthread_mutex_lock(&g_launch_lock);
  const int r = run_grid_locked(grid, block, fn, closure);
  pthread_mutex_unlock(&g_launch_lock);
  return r;
}

static int run_grid_locked(dim3 grid, dim3 block, Thunk fn, void* closure) {
  Worker* w = worker();
  w->error = nullptr;
  const long long n = (long long)block.x * block.y * block.z;
  // the limits of every GPU since sm_30: a launch beyond them fails on the device too
  if (n < 1 || n > kMaxThreads || block.z > 64 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.x > 2147483647u ||
      grid.y > 65535 || grid.z > 65535) {
    return launch_error("beyond CUDA's grid/block limits (1024 threads, block.z 64, grid.y/z 65535)", grid, block);
  }
  if (!ensure_fibers(w, (int)n)) {
    snprintf(g_error, sizeof g_error, "cannot allocate %lld fiber stacks", n);
    w->error = g_error;
    return -1;
  }
  w->nthreads = (int)n;
  w->fn = fn;
  w->closure = closure;
  for (int t = 0; t < n; ++t) {
    Fiber* f = &w->fibers[t];
    f->lin = t;
    f->idx = uint3{(unsigned)(t % block.x), (unsigned)((t / block.x) % block.y), (unsigned)(t / (block.x * block.y))};
  }
  blockDim = block;
  gridDim = grid;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        if (run_block(w, block)) return -1;
      }
  return 0;
}

}  // namespace rtx_emu

extern "C" __attribute__((visibility("default"))) void rtx_emu_set_schedule(int mode, unsigned long long seed) {
  rtx_emu::g_schedule = mode;
  rtx_emu::g_rng = seed ? seed : 0x9E3779B97F4A7C15ull;
}

extern "C" __attribute__((visibility("default"))) const char* rtx_emu_last_error() {
  return rtx_emu::g_worker && rtx_emu::g_worker->error ? rtx_emu::g_worker->error : "";
}

// ------------------------------------------------------------------------------------------ CUDA intrinsics
static inline void __syncthreads() { rtx_emu::syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  rtx_emu::warp_collective(rtx_emu::W_SYNC, mask);
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline unsigned __activemask() { return rtx_emu::g_worker->warps[rtx_emu::g_worker->cur->lin >> 5].live; }
static inline void __trap() { rtx_emu::fail_and_park(rtx_emu::g_worker, "__trap() called"); }
static inline void __brkpt() { __trap(); }

template <class T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = (int)rtx_emu::lane_id();
  return rtx_emu::shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = (int)rtx_emu::lane_id(), src = lane ^ lane_mask;
  // a lane may read earlier segments of `width` lanes, never a later one (CUDA programming guide)
  return rtx_emu::shfl(mask, v, src >= ((lane & ~(width - 1)) + width) ? lane : src);
}
template <class T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = (int)rtx_emu::lane_id(), src = lane - (int)delta;
  return rtx_emu::shfl(mask, v, src < (lane & ~(width - 1)) ? lane : src);
}
template <class T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = (int)rtx_emu::lane_id(), src = lane + (int)delta;
  return rtx_emu::shfl(mask, v, src >= (lane & ~(width - 1)) + width ? lane : src);
}
static inline unsigned __ballot_sync(unsigned mask, int pred) { return rtx_emu::vote(mask, pred) & mask; }
static inline int __any_sync(unsigned mask, int pred) { return (rtx_emu::vote(mask, pred) & mask) != 0; }
static inline int __all_sync(unsigned mask, int pred) {
  const unsigned live = __activemask() & mask;
  return (rtx_emu::vote(mask, pred) & live) == live;
}

// atomics: real ones, although blocks run one at a time (host code may share the memory)
#define RTX_ATOMIC_INT(T)                                                                            \
  static inline T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }        \
  static inline T atomicSub(T* p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST); }        \
  static inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }      \
  static inline T atomicAnd(T* p, T v) { return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }        \
  static inline T atomicOr(T* p, T v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }          \
  static inline T atomicXor(T* p, T v) { return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST); }        \
  static inline T atomicCAS(T* p, T cmp, T v) {                                                      \
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);               \
    return cmp;                                                                                      \
  }                                                                                                  \
  static inline T atomicMax(T* p, T v) {                                                             \
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                    \
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {} \
    return old;                                                                                      \
  }                                                                                                  \
  static inline T atomicMin(T* p, T v) {                                                             \
    T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);                                                    \
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {} \
    return old;                                                                                      \
  }
RTX_ATOMIC_INT(int)
RTX_ATOMIC_INT(unsigned)
RTX_ATOMIC_INT(long long)
RTX_ATOMIC_INT(unsigned long long)
#undef RTX_ATOMIC_INT

template <class F, class U, class Op> static inline F rtx_atomic_float(F* p, Op op) {
  U* q = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(q, __ATOMIC_SEQ_CST);
  for (;;) {
    const U nv = rtx_bit_cast<U>(op(rtx_bit_cast<F>(old)));
    if (__atomic_compare_exchange_n(q, &old, nv, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) return rtx_bit_cast<F>(old);
  }
}
static inline float atomicAdd(float* p, float v) { return rtx_atomic_float<float, unsigned>(p, [v](float o) { return o + v; }); }
static inline double atomicAdd(double* p, double v) {
  return rtx_atomic_float<double, unsigned long long>(p, [v](double o) { return o + v; });
}
static inline float atomicExch(float* p, float v) { return rtx_atomic_float<float, unsigned>(p, [v](float) { return v; }); }
// not CUDA builtins (CUDA has no float atomicMax/Min): an emulator extension for kernels that
// implement them with atomicCAS loops; same result
static inline float atomicMax(float* p, float v) { return rtx_atomic_float<float, unsigned>(p, [v](float o) { return fmaxf(o, v); }); }
static inline float atomicMin(float* p, float v) { return rtx_atomic_float<float, unsigned>(p, [v](float o) { return fminf(o, v); }); }

// ------------------------------------------------------------------------------------------ nvcuda::wmma
// Emulation of the WMMA API for m16n16k16 (and the other documented shapes, same code): every
// lane's fragment holds the WHOLE tile (x[num_elements], row-major within the tile), so only
// load_matrix_sync / store_matrix_sync / fill_fragment / mma_sync and elementwise loops over
// frag.x[i] (for i < num_elements) behave as on the GPU. Code that assumes a particular
// element-to-lane mapping (unspecified by CUDA) is not supported. No warp barrier is implied.
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K> struct rtx_dims;
template <int M, int N, int K> struct rtx_dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct rtx_dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct rtx_dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
  static constexpr int rows = rtx_dims<Use, M, N, K>::rows, cols = rtx_dims<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  T x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L, class V>
static inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = (T)v;
}
template <class Use, int M, int N, int K, class T, class S>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, row_major>& f, const S* p, unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = (T)p[(size_t)r * ldm + c];
}
template <class Use, int M, int N, int K, class T, class S>
static inline void load_matrix_sync(fragment<Use, M, N, K, T, col_major>& f, const S* p, unsigned ldm) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c) f.x[r * f.cols + c] = (T)p[(size_t)c * ldm + r];
}
template <int M, int N, int K, class T, class S>
static inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const S* p, unsigned ldm, layout_t l) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c)
      f.x[r * f.cols + c] = (T)p[l == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r];
}
template <int M, int N, int K, class T, class S>
static inline void store_matrix_sync(S* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t l) {
  for (int r = 0; r < f.rows; ++r)
    for (int c = 0; c < f.cols; ++c)
      p[l == mem_row_major ? (size_t)r * ldm + c : (size_t)c * ldm + r] = (S)f.x[r * f.cols + c];
}
template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC, class TD>
static inline void mma_sync(fragment<accumulator, M, N, K, TD, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                            const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c,
                            bool = false) {
  float out[M * N];
  for (int r = 0; r < M; ++r)
    for (int j = 0; j < N; ++j) {
      float acc = (float)c.x[r * N + j];
      for (int k = 0; k < K; ++k) acc = fmaf((float)a.x[r * K + k], (float)b.x[k * N + j], acc);
      out[r * N + j] = acc;
    }
  for (int i = 0; i < M * N; ++i) d.x[i] = (TD)out[i];
}
}  // namespace wmma
}  // namespace nvcuda
