// Device-only pieces of the row-block kernel: inline PTX (sm_80+) and, per precision, a
// warp's two products of a tile (docs/cuda.md, "Products per precision"):
//   gram(s, q, k)        s += Q K^T, the warp's 16 rows x kTileCols, one feature window;
//   product(o, l, s, v)  o += P V with P = s, and l += P [1 w], the row sums of exactly
//                        the weights multiplied (w = 1/2 on x-x tiles, for lse).
// elem_* / out_* / sum_*: the row and column of a lane's element of s / o / l.
#pragma once

#include "mma_layout.h"
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <type_traits>

namespace pyhypersphere::cuda {

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#define PYHS_LDMATRIX(trans)                                                                      \
  asm volatile("ldmatrix.sync.aligned.m8n8.x4" trans ".shared.b16 {%0, %1, %2, %3}, [%4];\n"      \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)))
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  if constexpr (kTrans) PYHS_LDMATRIX(".trans");
  else PYHS_LDMATRIX("");
}
#undef PYHS_LDMATRIX
__device__ __forceinline__ void copy_async_16(void* shared_dst, const void* global_src) {  // bypasses L1
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_address(shared_dst)), "l"(global_src)
               : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// m16n8 with f32 accumulators in place: bf16, fp16 (k16) or tf32 (k8) operands.
#define PYHS_MMA_16X8(types)                                                                                  \
  asm volatile("mma.sync.aligned." types " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n" \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
template <class T>
__device__ __forceinline__ void mma_16x8x16(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  if constexpr (std::is_same_v<T, __half>) PYHS_MMA_16X8("m16n8k16.row.col.f32.f16.f16.f32");
  else PYHS_MMA_16X8("m16n8k16.row.col.f32.bf16.bf16.f32");
}
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
  PYHS_MMA_16X8("m16n8k8.row.col.f32.tf32.tf32.f32");
}
#undef PYHS_MMA_16X8
__device__ __forceinline__ void mma_f64(double (&d)[2], double a, double b) {
  asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
               : "+d"(d[0]), "+d"(d[1]) : "d"(a), "d"(b));
}
__device__ __forceinline__ unsigned to_tf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}
template <class T>  // two floats as a 16-bit pair (the first in the low half), to nearest
__device__ __forceinline__ unsigned pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  }
}
template <int N = 4, class T>  // N accumulators of one mma at p
__device__ __forceinline__ T (&acc4(T* p))[N] { return *reinterpret_cast<T(*)[N]>(p); }

// A warp owns 16 rows.  The sums' B (16-bit, f64): 1 in column 0, w in column 1, else 0.
struct RowSlice {
  static constexpr int kRows = 16;
  template <class T>
  __device__ static T ones_value(int lane, T w) {
    const int g = layout::group_of(lane);
    return g == 0 ? T(1) : (g == 1 ? w : T(0));
  }
  __device__ static int sum_row(int lane, int e) { return layout::group_of(lane) + 8 * (e >> 1); }
  __device__ static int sum_col(int lane, int e) { return 2 * layout::thread_in_group(lane) + (e & 1); }
  template <class T, int kL>
  __device__ static void finish_sums(T (&)[kL]) {}
};

// m16n8 accumulators (16-bit and TF32), flat [n8 tile][4].  gram: A and two n8 tiles of
// B per ldmatrix (2 halves per TF32 element), Mma::mma_bits on the registers as loaded.
template <class Mma, class T, int kWin, int kCols>
struct Acc16x8 : RowSlice {
  using op_t = T;
  using acc_t = float;
  static constexpr int kWindow = kWin, kTileCols = kCols, kS = kCols / 2, kO = kWin / 2, kL = 4;
  __device__ static int elem_row(int lane, int e) { return layout::acc16x8(lane, e & 3).row; }
  __device__ static int elem_col(int lane, int e) { return 8 * (e >> 2) + layout::acc16x8(lane, e & 3).col; }
  __device__ static int elem_slot(int e) { return (e >> 1) & 1; }  // row g (0) or g + 8 (1)
  __device__ static int out_row(int lane, int e) { return elem_row(lane, e); }
  __device__ static int out_col(int lane, int e) { return elem_col(lane, e); }
  __device__ static void gram(float (&s)[kS], const T* q, const T* k, int pitch, int lane) {
    constexpr int kHalves = int(sizeof(T)) / 2;
    const layout::Coord ar = layout::ldmatrix_a_row(lane), br = layout::ldmatrix_bt_row(lane);
#pragma unroll
    for (int k0 = 0; k0 < kWindow; k0 += 16 / kHalves) {
      unsigned a[4], b[4];
      ldmatrix_x4(a, q + ar.row * pitch + k0 + ar.col / kHalves);
#pragma unroll
      for (int np = 0; np < kTileCols / 16; ++np) {
        ldmatrix_x4(b, k + (np * 16 + br.row) * pitch + k0 + br.col / kHalves);
        Mma::mma_bits(acc4(s + 8 * np), a, b[0], b[1]);
        Mma::mma_bits(acc4(s + 8 * np + 4), a, b[2], b[3]);
      }
    }
  }
};

// bf16 / fp16: m16n8k16; P V's A = S's accumulators rounded to T (FA2's reuse), V by
// ldmatrix.trans; the sums take the same rounded weights.
template <class T>
struct Mma16 : Acc16x8<Mma16<T>, T, 128, 64> {
  using Base = Acc16x8<Mma16<T>, T, 128, 64>;
  __device__ static T round_operand(T v) { return v; }
  __device__ static void mma_bits(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    mma_16x8x16<T>(d, a, b0, b1);
  }
  __device__ static void product(float (&o)[Base::kO], float (&l)[Base::kL], const float (&s)[Base::kS], const T* v,
                                 int pitch, int lane, float w, bool with_o) {
    const layout::Coord vr = layout::ldmatrix_a_row(lane);
    const float one = Base::ones_value(lane, w);
    const unsigned ones = pack_pair<T>(one, one);
#pragma unroll
    for (int kk = 0; kk < Base::kTileCols / 16; ++kk) {
      unsigned a[4], b[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float* c = s + 4 * (2 * kk + layout::acc_tile_of_a16(r)) + layout::acc_first_of_a16(r);
        a[r] = pack_pair<T>(c[0], c[1]);
      }
      mma_16x8x16<T>(l, a, ones, ones);
      if (!with_o) continue;
#pragma unroll
      for (int np = 0; np < Base::kWindow / 16; ++np) {
        ldmatrix_x4<true>(b, v + (kk * 16 + vr.row) * pitch + np * 16 + vr.col);
        mma_16x8x16<T>(acc4(o + 8 * np), a, b[0], b[1]);
        mma_16x8x16<T>(acc4(o + 8 * np + 4), a, b[2], b[3]);
      }
    }
  }
};

// float32 on TF32 (m16n8k8).  kSplit: 3xTF32; else rows stored TF32-rounded, weights
// rounded here.  P V runs transposed (docs/cuda.md): O^T = V^T P^T.
template <bool kSplit>
struct MmaTf32 : Acc16x8<MmaTf32<kSplit>, float, 64, 64> {
  using Base = Acc16x8<MmaTf32<kSplit>, float, 64, 64>;
  static constexpr int kL = 8;  // O^T and l^T: [m tile][row tile][4]
  __device__ static float round_operand(float v) { return kSplit ? v : __uint_as_float(to_tf32(v)); }
  __device__ static int out_row(int lane, int e) { return layout::tf32_out_row(lane, e); }
  __device__ static int out_col(int lane, int e) {
    return layout::tf32_v_feature(e >> 3, layout::group_of(lane), (e >> 1) & 1);
  }
  __device__ static int sum_row(int lane, int e) { return layout::tf32_out_row(lane, e); }
  __device__ static int sum_col(int lane, int e) { return layout::tf32_sum_col(lane, e); }
  __device__ static void finish_sums(float (&l)[kL]) {
#pragma unroll
    for (int e = 0; e < kL; ++e)
      if (!(e & 2)) l[e] += l[e + 2];
  }
  // Weights (finite, >= 0) to TF32: cvt.rna less its inf / NaN select (13 low bits ignored).
  __device__ static unsigned weight_tf32(unsigned w) { return w + 0x1000u; }
  __device__ static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, bool b_is_weight) {
    if constexpr (kSplit) {
      const unsigned v[6] = {a[0], a[1], a[2], a[3], b0, b1};
      unsigned big[6], small[6];
#pragma unroll
      for (int i = 0; i < 6; ++i) {
        big[i] = to_tf32(__uint_as_float(v[i]));
        small[i] = to_tf32(__uint_as_float(v[i]) - __uint_as_float(big[i]));
      }
      mma_tf32(d, acc4(small), big[4], big[5]);  // small terms first
      mma_tf32(d, acc4(big), small[4], small[5]);
      mma_tf32(d, acc4(big), big[4], big[5]);
    } else {
      mma_tf32(d, a, b_is_weight ? weight_tf32(b0) : b0, b_is_weight ? weight_tf32(b1) : b1);
    }
  }
  __device__ static void mma_bits(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    mma(d, a, b0, b1, false);
  }
  // k8 step c: B = P^T of rows g (row tile 0), g + 8 (1) at columns 8c + 2t, + 1; A = V^T
  // of m tile i: features tf32_v_feature(i, g, 0 / 1) of V's rows 8c + 2t, + 1.
  __device__ static void product(float (&o)[Base::kO], float (&l)[kL], const float (&s)[Base::kS], const float* v,
                                 int pitch, int lane, float w, bool with_o) {
    const int g = layout::group_of(lane), t = layout::thread_in_group(lane);
    unsigned ones[4], p[Base::kS];
#pragma unroll
    for (int r = 0; r < 4; ++r) ones[r] = __float_as_uint(layout::tf32_sums_a(g, Base::ones_value(lane, w), r));
#pragma unroll
    for (int e = 0; e < Base::kS; ++e) p[e] = __float_as_uint(s[e]);
    auto sums = [&](int c) {
      mma(acc4(l), ones, p[4 * c], p[4 * c + 1], true);
      mma(acc4(l + 4), ones, p[4 * c + 2], p[4 * c + 3], true);
    };
    // TF32: the sums first, so that the products' loop has no branch; 3xTF32: beside the
    // products, so that each weight is split once.
    if constexpr (!kSplit) {
#pragma unroll
      for (int c = 0; c < Base::kTileCols / 8; ++c) sums(c);
      if (!with_o) return;
    }
    const float* vt = v + 2 * t * pitch + layout::tf32_v_feature(0, g, 0);
#pragma unroll
    for (int c = 0; c < Base::kTileCols / 8; ++c) {
      if constexpr (kSplit) sums(c);
      if (!with_o) continue;
#pragma unroll
      for (int i = 0; i < Base::kWindow / 16; ++i) {
        const float* v0 = vt + 8 * c * pitch + layout::tf32_v_feature(i, 0, 0);
        const float2 lo = *reinterpret_cast<const float2*>(v0), hi = *reinterpret_cast<const float2*>(v0 + pitch);
        const unsigned a[4] = {__float_as_uint(lo.x), __float_as_uint(lo.y), __float_as_uint(hi.x), __float_as_uint(hi.y)};
        mma(acc4(o + 8 * i), a, p[4 * c], p[4 * c + 1], true);
        mma(acc4(o + 8 * i + 4), a, p[4 * c + 2], p[4 * c + 3], true);
      }
    }
  }
};

// float64 on DMMA (m8n8k4): a warp's 16 rows are two m8 atoms, [atom][n8 tile][2]; P V's k
// permuted as for TF32 (two k4 steps per n8 column tile: columns 2t, then 2t + 1).
struct MmaF64 : RowSlice {
  using op_t = double;
  using acc_t = double;
  static constexpr int kWindow = 32, kTileCols = 32, kN8 = kTileCols / 8, kOut8 = kWindow / 8;
  static constexpr int kS = 4 * kN8, kO = 4 * kOut8, kL = 4;
  __device__ static int elem_slot(int e) { return e / (2 * kN8); }
  __device__ static int elem_row(int lane, int e) { return 8 * elem_slot(e) + layout::group_of(lane); }
  __device__ static int elem_col(int lane, int e) { return 8 * ((e >> 1) % kN8) + layout::acc8x8(lane, e & 1).col; }
  __device__ static int out_row(int lane, int e) { return 8 * (e / (2 * kOut8)) + layout::group_of(lane); }
  __device__ static int out_col(int lane, int e) { return 8 * ((e >> 1) % kOut8) + layout::acc8x8(lane, e & 1).col; }
  __device__ static double round_operand(double v) { return v; }
  __device__ static void gram(double (&s)[kS], const double* q, const double* k, int pitch, int lane) {
    const int g = layout::group_of(lane), t = layout::thread_in_group(lane);
#pragma unroll
    for (int k0 = 0; k0 < kWindow; k0 += 4) {
      const double a0 = q[g * pitch + k0 + t], a1 = q[(8 + g) * pitch + k0 + t];
#pragma unroll
      for (int n = 0; n < kN8; ++n) {
        const double b = k[(8 * n + g) * pitch + k0 + t];
        mma_f64(acc4<2>(s + 2 * n), a0, b);
        mma_f64(acc4<2>(s + 2 * kN8 + 2 * n), a1, b);
      }
    }
  }
  __device__ static void product(double (&o)[kO], double (&l)[kL], const double (&s)[kS], const double* v,
                                 int pitch, int lane, double w, bool with_o) {
    const int g = layout::group_of(lane), t = layout::thread_in_group(lane);
    const double one = ones_value(lane, w);
#pragma unroll
    for (int c = 0; c < 2 * kN8; ++c) {  // column tile c / 2, half c % 2
      const double a0 = s[c], a1 = s[2 * kN8 + c];
      mma_f64(acc4<2>(l), a0, one);
      mma_f64(acc4<2>(l + 2), a1, one);
      if (!with_o) continue;
      const double* vr = v + (4 * (c & ~1) + 2 * t + (c & 1)) * pitch + g;
#pragma unroll
      for (int f = 0; f < kOut8; ++f) {
        mma_f64(acc4<2>(o + 2 * f), a0, vr[8 * f]);
        mma_f64(acc4<2>(o + 2 * kOut8 + 2 * f), a1, vr[8 * f]);
      }
    }
  }
};

using MmaBf16 = Mma16<__nv_bfloat16>;
using MmaFp16 = Mma16<__half>;

}  // namespace pyhypersphere::cuda
