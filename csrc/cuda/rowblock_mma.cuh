// Device-only pieces of the row-block kernel: mma.sync / ldmatrix / cp.async in inline
// PTX (sm_80+) and, per precision, the two warp products of a tile:
//   gram(s, q, k)        s += Q K^T   the warp's 16 rows x kTileCols, one feature window
//   product(o, l, s, v)  o += P V     P = s (the weights), V = the tile's output window;
//                        l += P [1 w] the row sums of exactly the weights multiplied
//                                     (column 0) and lse's (column 1: w = 1/2 on x-x
//                                     tiles), one more n8 product on a constant B
// elem_row / elem_col: where a lane's accumulator element e sits (mma_layout.h).
#pragma once

#include "mma_layout.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace pyhypersphere {
namespace cuda {

// ---------------------------------------------------------------- PTX wrappers

__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p) {
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
  }
}
// 16 bytes global -> shared, bypassing L1 (cp.async.cg).
__device__ __forceinline__ void copy_async_16(void* shared_dst, const void* global_src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_address(shared_dst)),
               "l"(global_src)
               : "memory");
}
__device__ __forceinline__ void copy_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void copy_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// m16n8 with f32 accumulators in place: bf16, fp16 (k16) or tf32 (k8) operands.
#define PYHS_MMA_16X8(types)                                                                 \
  asm volatile("mma.sync.aligned." types " {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, " \
               "{%0, %1, %2, %3};\n"                                                          \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                \
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
               : "+d"(d[0]), "+d"(d[1])
               : "d"(a), "d"(b));
}
__device__ __forceinline__ unsigned to_tf32(float v) {
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return r;
}
// 3xTF32: v = big + small, both TF32.
__device__ __forceinline__ void split_tf32(float v, unsigned& big, unsigned& small) {
  big = to_tf32(v);
  small = to_tf32(v - __uint_as_float(big));
}

// Two floats as a 16-bit pair (the first in the low half), rounded to nearest.
template <class T>
__device__ __forceinline__ unsigned pack_pair(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
  }
}

// ---------------------------------------------------------------- precisions

// A warp owns 16 rows.  The row sums' B fragment: 1 in column 0, w in column 1, else 0
// (a lane's B column is its group).
struct RowSlice {
  static constexpr int kRows = 16;
  template <class T>
  __device__ static T ones_value(int lane, T w) {
    const int g = layout::group_of(lane);
    return g == 0 ? T(1) : (g == 1 ? w : T(0));
  }
  // Row sums: element e of l is (row, column) of [l lw] (columns 0 and 1; others are 0).
  __device__ static int sum_row(int lane, int e) { return layout::group_of(lane) + 8 * (e >> 1); }
  __device__ static int sum_col(int lane, int e) { return 2 * layout::thread_in_group(lane) + (e & 1); }
  template <class T, int kL>
  __device__ static void finish_sums(T (&)[kL]) {}
};

// m16n8 accumulators (16-bit and TF32), flat [n8 tile][4]; S, O and the sums alike.
struct Acc16x8 : RowSlice {
  static constexpr int kL = 4;
  __device__ static int elem_row(int lane, int e) { return layout::acc16x8(lane, e & 3).row; }
  __device__ static int elem_col(int lane, int e) { return 8 * (e >> 2) + layout::acc16x8(lane, e & 3).col; }
  __device__ static int elem_slot(int e) { return (e >> 1) & 1; }  // row g (0) or g + 8 (1)
  __device__ static int out_row(int lane, int e) { return elem_row(lane, e); }
  __device__ static int out_col(int lane, int e) { return elem_col(lane, e); }

  // S += Q K^T over one window of Mma's: A and two n8 tiles of B per ldmatrix (kHalves:
  // 16-bit halves per element, 2 for TF32), Mma::mma_bits on the registers as loaded.
  template <class Mma, class T>
  __device__ static void gram16x8(float (&s)[Mma::kS], const T* q, const T* k, int pitch, int lane) {
    constexpr int kHalves = int(sizeof(T)) / 2;
    const layout::Coord ar = layout::ldmatrix_a_row(lane), br = layout::ldmatrix_bt_row(lane);
#pragma unroll
    for (int k0 = 0; k0 < Mma::kWindow; k0 += 16 / kHalves) {
      unsigned a[4];
      ldmatrix_x4(a, q + ar.row * pitch + k0 + ar.col / kHalves);
#pragma unroll
      for (int np = 0; np < Mma::kTileCols / 16; ++np) {
        unsigned b[4];
        ldmatrix_x4(b, k + (np * 16 + br.row) * pitch + k0 + br.col / kHalves);
        Mma::mma_bits(*reinterpret_cast<float(*)[4]>(s + 8 * np), a, b[0], b[1]);
        Mma::mma_bits(*reinterpret_cast<float(*)[4]>(s + 8 * np + 4), a, b[2], b[3]);
      }
    }
  }
};

// bf16 / fp16: m16n8k16, fragments by ldmatrix; the weights enter P V rounded to T (the
// row sums take the same values).
template <class T>
struct Mma16 : Acc16x8 {
  using op_t = T;
  using acc_t = float;
  static constexpr int kWindow = 128, kTileCols = 64;
  static constexpr int kS = kTileCols / 2, kO = kWindow / 2;  // accumulators per lane
  __device__ static T round_operand(T v) { return v; }

  __device__ static void mma_bits(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    mma_16x8x16<T>(d, a, b0, b1);
  }
  __device__ static void gram(float (&s)[kS], const T* q, const T* k, int pitch, int lane) {
    gram16x8<Mma16>(s, q, k, pitch, lane);
  }

  __device__ static void product(float (&o)[kO], float (&l)[kL], const float (&s)[kS], const T* v, int pitch,
                                 int lane, float w, bool with_o) {
    const layout::Coord vr = layout::ldmatrix_a_row(lane);
    const float one = ones_value(lane, w);
    const unsigned ones = pack_pair<T>(one, one);
#pragma unroll
    for (int kk = 0; kk < kTileCols / 16; ++kk) {
      unsigned a[4];  // S's column tiles 2kk, 2kk + 1 are the A fragment of k16 step kk
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float* c = s + 4 * (2 * kk + layout::acc_tile_of_a16(r)) + layout::acc_first_of_a16(r);
        a[r] = pack_pair<T>(c[0], c[1]);
      }
      mma_16x8x16<T>(l, a, ones, ones);
      if (!with_o) continue;
#pragma unroll
      for (int np = 0; np < kWindow / 16; ++np) {
        unsigned b[4];
        ldmatrix_x4<true>(b, v + (kk * 16 + vr.row) * pitch + np * 16 + vr.col);
        mma_16x8x16<T>(*reinterpret_cast<float(*)[4]>(o + 8 * np), a, b[0], b[1]);
        mma_16x8x16<T>(*reinterpret_cast<float(*)[4]>(o + 8 * np + 4), a, b[2], b[3]);
      }
    }
  }
};

// float32 on TF32 tensor cores (m16n8k8).  kSplit: 3xTF32, float32 accuracy (big + small
// parts, small * small dropped); else the rows are stored TF32-rounded and only the
// weights are rounded here.  P V runs transposed, O^T = V^T P^T: P's accumulators are B
// pairs as they lie and V^T's A registers are two 8-byte loads, where O = P V needed
// V's B pairs from two rows (register moves: ldmatrix cannot transpose 32-bit words).
template <bool kSplit>
struct MmaTf32 : Acc16x8 {
  using op_t = float;
  using acc_t = float;
  static constexpr int kWindow = 64, kTileCols = 64;
  static constexpr int kS = kTileCols / 2, kO = kWindow / 2, kL = 8;  // O^T, l^T: [m tile][row tile][4]
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
  // A weight (finite, >= 0) rounded to TF32, ties away: ptxas's own cvt.rna.tf32.f32 less
  // its inf / NaN select (the tensor core ignores the 13 low bits).
  __device__ static unsigned weight_tf32(float w) { return __float_as_uint(w) + 0x1000u; }

  // d += a b with a as stored (TF32 rows, the Gram's A or P V's V^T) and b a weight.
  __device__ static void mma(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1, bool b_is_weight) {
    if constexpr (kSplit) {
      unsigned ab[4], as[4], bb0, bs0, bb1, bs1;
#pragma unroll
      for (int i = 0; i < 4; ++i) split_tf32(__uint_as_float(a[i]), ab[i], as[i]);
      split_tf32(__uint_as_float(b0), bb0, bs0);
      split_tf32(__uint_as_float(b1), bb1, bs1);
      mma_tf32(d, as, bb0, bb1);  // small terms first
      mma_tf32(d, ab, bs0, bs1);
      mma_tf32(d, ab, bb0, bb1);
    } else if (b_is_weight) {
      mma_tf32(d, a, weight_tf32(__uint_as_float(b0)), weight_tf32(__uint_as_float(b1)));
    } else {
      mma_tf32(d, a, b0, b1);
    }
  }
  __device__ static void mma_bits(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    mma(d, a, b0, b1, false);
  }
  __device__ static void gram(float (&s)[kS], const float* q, const float* k, int pitch, int lane) {
    gram16x8<MmaTf32>(s, q, k, pitch, lane);
  }

  // k8 step c: B = P^T, rows g (n8 tile 0) and g + 8 (tile 1) at columns 8c + 2t, 2t + 1
  // (layout::permuted_k_column); A = V^T of m16 tile i: features tf32_v_feature(i, g, 0 / 1)
  // of V's rows 8c + 2t, 2t + 1.
  __device__ static void product(float (&o)[kO], float (&l)[kL], const float (&s)[kS], const float* v, int pitch,
                                 int lane, float w, bool with_o) {
    const int g = layout::group_of(lane), t = layout::thread_in_group(lane);
    unsigned ones[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) ones[r] = __float_as_uint(layout::tf32_sums_a(g, ones_value(lane, w), r));
    unsigned p[kS];
#pragma unroll
    for (int e = 0; e < kS; ++e) p[e] = __float_as_uint(s[e]);
#pragma unroll
    for (int c = 0; c < kTileCols / 8; ++c) {
      mma(*reinterpret_cast<float(*)[4]>(l), ones, p[4 * c], p[4 * c + 1], true);
      mma(*reinterpret_cast<float(*)[4]>(l + 4), ones, p[4 * c + 2], p[4 * c + 3], true);
    }
    if (!with_o) return;
    const float* vt = v + 2 * t * pitch + layout::tf32_v_feature(0, g, 0);
#pragma unroll
    for (int c = 0; c < kTileCols / 8; ++c) {
#pragma unroll
      for (int i = 0; i < kWindow / 16; ++i) {
        const float* v0 = vt + 8 * c * pitch + layout::tf32_v_feature(i, 0, 0);
        const float2 lo = *reinterpret_cast<const float2*>(v0), hi = *reinterpret_cast<const float2*>(v0 + pitch);
        const unsigned a[4] = {__float_as_uint(lo.x), __float_as_uint(lo.y), __float_as_uint(hi.x), __float_as_uint(hi.y)};
        mma(*reinterpret_cast<float(*)[4]>(o + 8 * i), a, p[4 * c], p[4 * c + 1], true);
        mma(*reinterpret_cast<float(*)[4]>(o + 8 * i + 4), a, p[4 * c + 2], p[4 * c + 3], true);
      }
    }
  }
};

// float64 on DMMA (m8n8k4): a warp's 16 rows are two m8 atoms; P V's k permuted as for
// TF32 (two k4 steps per n8 column tile: columns 2t, then 2t + 1).
struct MmaF64 : RowSlice {
  using op_t = double;
  using acc_t = double;
  static constexpr int kWindow = 32, kTileCols = 32;
  static constexpr int kN8 = kTileCols / 8, kOut8 = kWindow / 8;
  static constexpr int kS = 2 * kN8 * 2;  // [atom][n8 tile][2]
  static constexpr int kO = 2 * kOut8 * 2;
  static constexpr int kL = 4;  // [atom][2]
  __device__ static int elem_row(int lane, int e) { return 8 * (e / (2 * kN8)) + layout::acc8x8(lane, e & 1).row; }
  __device__ static int elem_col(int lane, int e) { return 8 * ((e >> 1) % kN8) + layout::acc8x8(lane, e & 1).col; }
  __device__ static int elem_slot(int e) { return e / (2 * kN8); }
  __device__ static int out_row(int lane, int e) { return 8 * (e / (2 * kOut8)) + layout::acc8x8(lane, e & 1).row; }
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
        mma_f64(*reinterpret_cast<double(*)[2]>(s + 2 * n), a0, b);
        mma_f64(*reinterpret_cast<double(*)[2]>(s + 2 * kN8 + 2 * n), a1, b);
      }
    }
  }

  __device__ static void product(double (&o)[kO], double (&l)[kL], const double (&s)[kS], const double* v,
                                 int pitch, int lane, double w, bool with_o) {
    const int g = layout::group_of(lane), t = layout::thread_in_group(lane);
    const double one = ones_value(lane, w);
#pragma unroll
    for (int c = 0; c < kN8; ++c) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const double a0 = s[2 * c + half], a1 = s[2 * kN8 + 2 * c + half];
        mma_f64(*reinterpret_cast<double(*)[2]>(l), a0, one);
        mma_f64(*reinterpret_cast<double(*)[2]>(l + 2), a1, one);
        if (!with_o) continue;
        const double* vr = v + (8 * c + 2 * t + half) * pitch + g;
#pragma unroll
        for (int f = 0; f < kOut8; ++f) {
          mma_f64(*reinterpret_cast<double(*)[2]>(o + 2 * f), a0, vr[8 * f]);
          mma_f64(*reinterpret_cast<double(*)[2]>(o + 2 * kOut8 + 2 * f), a1, vr[8 * f]);
        }
      }
    }
  }
};

using MmaBf16 = Mma16<__nv_bfloat16>;
using MmaFp16 = Mma16<__half>;

}  // namespace cuda
}  // namespace pyhypersphere
