// The element-wise part of a CPU logit tile (contrastive_cpu.cpp).
//
// The tile holds the logits s_ij = scale <a_i, b_j> of rows i of one block against rows
// j of another, row-major with leading dimension ld.  With `diagonal` (a block against
// itself, self pairs excluded, or the tile of the positive pairs (a_i, b_i) when they are
// skipped) entry (i, i) is skipped everywhere (for i < cols: the tile may be ragged).
//   logit_max:          row maxima into row_max[0, rows) and, when col_max is given,
//                       column maxima into col_max[0, cols).
//   logit_exp_sums:     row_sum[i] = sum_j exp(s_ij - row_max[i]) and, when col_sum is
//                       given, col_sum[j] = sum_i exp(s_ij - col_max[j]).
//   logit_grad_weights: s_ij <- g_row[i] exp(s_ij - lse_row[i])
//                               + g_col[j] exp(s_ij - lse_col[j])  (when lse_col is given),
//                       and 0 at (i, i): the weights of the gradient of
//                       sum_i g_row[i] lse_row[i] + sum_j g_col[j] lse_col[j].
//   logit_exp_store:    s_ij <- exp(s_ij - row_max[i]) and row_sum[i] = sum_j of them
//                       (no diagonal: the row strips of mean_lse_strips.h).
//   logit_scale_rows:   s_ij <- factor[i] s_ij.
// Every exp has an argument <= 0 (shifts are maxima or log-sum-exps), so nothing
// overflows.  Each row and column gets its own shift: a softmax needs every row's
// log-sum-exp accurately, not only the dominant ones.  The float versions use the
// vectorized exp of float_vec.h, compiled per ISA (cpu_isa.h); the double versions use
// std::exp.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace pyhypersphere {
namespace cpu {

void logit_max(const float* s, int64_t rows, int64_t cols, int64_t ld, float* row_max,
               float* col_max, bool diagonal);
void logit_max(const double* s, int64_t rows, int64_t cols, int64_t ld, double* row_max,
               double* col_max, bool diagonal);

void logit_exp_sums(const float* s, int64_t rows, int64_t cols, int64_t ld, const float* row_max,
                    float* row_sum, const float* col_max, float* col_sum, bool diagonal);
void logit_exp_sums(const double* s, int64_t rows, int64_t cols, int64_t ld,
                    const double* row_max, double* row_sum, const double* col_max,
                    double* col_sum, bool diagonal);

void logit_grad_weights(float* s, int64_t rows, int64_t cols, int64_t ld, const float* lse_row,
                        const float* g_row, const float* lse_col, const float* g_col,
                        bool diagonal);
void logit_grad_weights(double* s, int64_t rows, int64_t cols, int64_t ld, const double* lse_row,
                        const double* g_row, const double* lse_col, const double* g_col,
                        bool diagonal);

void logit_exp_store(float* s, int64_t rows, int64_t cols, int64_t ld, const float* row_max,
                     float* row_sum);
void logit_exp_store(double* s, int64_t rows, int64_t cols, int64_t ld, const double* row_max,
                     double* row_sum);

void logit_scale_rows(float* s, int64_t rows, int64_t cols, int64_t ld, const float* factor);
void logit_scale_rows(double* s, int64_t rows, int64_t cols, int64_t ld, const double* factor);

// log(e^u + e^v) without overflow, exact at -inf (log(0 + e^v) = v).
inline double log_add_exp(double u, double v) {
  const double m = u > v ? u : v;
  if (m == -std::numeric_limits<double>::infinity()) return m;
  return m + std::log1p(std::exp(-std::fabs(u - v)));
}

// Merges a tile's (max, sum) of each row (from logit_max / logit_exp_sums) into the row's
// running (max, sum), kept in double.
template <typename T>
void merge_rows(const T* tile_max, const T* tile_sum, int64_t rows, double* max, double* sum) {
  for (int64_t i = 0; i < rows; ++i) {
    if (!(tile_sum[i] > 0)) continue;  // a row with no pair in this tile
    const double m = tile_max[i], s = tile_sum[i];
    if (m > max[i]) {
      sum[i] = sum[i] * std::exp(max[i] - m) + s;
      max[i] = m;
    } else {
      sum[i] += s * std::exp(m - max[i]);
    }
  }
}

}  // namespace cpu
}  // namespace pyhypersphere
