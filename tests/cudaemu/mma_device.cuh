// mma_device.cuh - tensor-core helpers meant for the nvrtc backend's PRELUDE (self-contained:
// no #include, so the text can be pasted into an NVRTC program as is).
//
// On the GPU they are inline PTX; compiled by tests/cudaemu (cuda_shim.h defines RTX_EMULATOR)
// they are warp exchanges: every lane deposits its fragment, the last lane to arrive computes
// the whole warp's result with the documented layout, every lane takes its part back.
//
// mma_m16n8k16_f16f32(d, a, b, c): D = A x B + C with A 16x16 f16 (row), B 16x8 f16 (col),
// C/D 16x8 f32 - PTX `mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32`, sm_80+. Fragments
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane >> 2 (groupID) and t = lane % 4 (threadID_in_group); element i of a fragment is in
// register i / 2, the even element in the low 16 bits:
//   a[0] = A[g][2t..2t+1]      a[1] = A[g+8][2t..2t+1]
//   a[2] = A[g][2t+8..2t+9]    a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g]      b[1] = B[2t+8..2t+9][g]
//   c[0..1] = C[g][2t..2t+1]   c[2..3] = C[g+8][2t..2t+1]     (same for d)
//
// ldmatrix_x{1,2,4}[_trans](r, p): PTX `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`,
// sm_75+. Lane 8*j + i passes the address of row i of 8x8 matrix j (16-bit elements, 16-byte
// aligned rows, shared memory); lane l receives in r[j] the elements (row l/4, cols 2*(l%4),
// 2*(l%4)+1) of matrix j - with _trans, (rows 2*(l%4), 2*(l%4)+1, col l/4). Lanes >= 8*num pass
// any address. So, for a row-major 16x16 f16 tile As and the mma above:
//   ldmatrix_x4(a, &As[lane % 16][(lane / 16) * 8]) gives the a fragment;
//   ldmatrix_x2_trans(b, &Bs[lane % 16][0]) gives b from a row-major 16x8 (k x n) tile Bs;
//   ldmatrix_x2(b, &Bt[lane % 8][(lane / 8) * 8]) gives b from an 8x16 (n x k) tile Bt.
#ifndef RTX_MMA_DEVICE_CUH
#define RTX_MMA_DEVICE_CUH

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

#else  // NVRTC / nvcc

__device__ __forceinline__ void mma_m16n8k16_f16f32(float d[4], const unsigned a[4], const unsigned b[2],
                                                    const float c[4]) {
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // mma.m16n8k16 needs sm_80: callers must not select this path on older GPUs
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
#endif
#undef RTX_LDMATRIX

#endif  // RTX_EMULATOR
#endif  // RTX_MMA_DEVICE_CUH
