#include "mean_lse_strips.h"

#include "logit_epilogue.h"
#include "ordered_tiles.h"
#include "tile_gemm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace pyhypersphere {
namespace cpu {
namespace {

constexpr int64_t kDefaultStripBudgetBytes = int64_t{64} << 20;
// All workers' strips together: fewer workers than threads past it (a 64-core machine
// would otherwise hold 64 strips of up to 64 MiB); the results do not depend on it.
constexpr int64_t kAllStripsBudgetBytes = int64_t{256} << 20;
// Below 16 rows the P^T A_blk GEMM (inner dimension = the strip's rows) loses its
// efficiency, and grad_b is read and written once per strip.
constexpr int64_t kMinStripRows = 16;
// Strips per problem when rows allow, so that few queries (MoCo: 256 against a long
// queue) still spread over the threads; a function of the shape, not of the thread count.
constexpr int64_t kMinStrips = 8;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sets the strip's positive entries (row i against column i0 + i) that fall in the
// column block [j0, j0 + cols) to `value`.
template <typename T>
void set_positives(T* s, int64_t rows, int64_t ld, int64_t i0, int64_t j0, int64_t cols, T value) {
  for (int64_t i = std::max<int64_t>(0, j0 - i0); i < rows && i0 + i < j0 + cols; ++i) {
    s[i * ld + (i0 + i - j0)] = value;
  }
}


// The strip's rows against all of b when only sum_j P_ij b_j is wanted (no grad_b): the
// flash-attention forward.  Per column block the logits (GEMM into a block-sized
// workspace), their row maxima, each row's running max M (where it grows, the row's sum
// and accumulator are rescaled by e^(M_old - M_new)), exp(S - M) in place and
// acc += exp(S - M) B_c; at the end acc_i *= w_i / sum_i.  Nothing of the strip is kept.
template <typename T>
void online_strip(const T* a_rows, int64_t rows, int64_t i0, const T* b, int64_t nb, int64_t d,
                  T scale, int64_t cols, bool skip_positives, T* ws, double* max, double* sum,
                  T* acc) {
  constexpr double kNegInf = -std::numeric_limits<double>::infinity();
  T* s = ws;  // rows x cols
  T* block_max = s + rows * cols;
  T* shift = block_max + rows;
  T* row_sum = shift + rows;
  for (int64_t j0 = 0; j0 < nb; j0 += cols) {
    const int64_t n = std::min(cols, nb - j0);
    gemm_row_major<T>(false, true, rows, n, d, scale, a_rows, d, b + j0 * d, d, T(0), s, cols);
    if (skip_positives) set_positives(s, rows, cols, i0, j0, n, -std::numeric_limits<T>::infinity());
    logit_max(s, rows, n, cols, block_max, nullptr, false);
    for (int64_t i = 0; i < rows; ++i) {
      const double grown = std::max(max[i], static_cast<double>(block_max[i]));
      if (grown > max[i] && max[i] != kNegInf) {
        const double factor = std::exp(max[i] - grown);
        sum[i] *= factor;
        for (int64_t k = 0; k < d; ++k) acc[i * d + k] *= static_cast<T>(factor);
      }
      max[i] = grown;
      shift[i] = grown == kNegInf ? T(0) : static_cast<T>(grown);  // no terms yet: any finite shift
    }
    logit_exp_store(s, rows, n, cols, shift, row_sum);
    if (skip_positives) set_positives(s, rows, cols, i0, j0, n, T(0));
    for (int64_t i = 0; i < rows; ++i) {
      // A row whose only column here is its skipped positive has no terms (the float exp
      // clamps its argument: e^-inf is 1.6e-38).
      if (block_max[i] != -std::numeric_limits<T>::infinity()) sum[i] += row_sum[i];
    }
    gemm_row_major<T>(false, false, rows, d, n, T(1), s, cols, b + j0 * d, d, T(1), acc, d);
  }
}

}  // namespace

int64_t mean_lse_strip_rows(int64_t na, int64_t nb, int64_t elem_bytes, int64_t budget_bytes) {
  int64_t rows = cpu_block_rows(na);
  while (rows > kMinStripRows && ceil_div(na, rows) < kMinStrips) rows /= 2;
  while (rows > kMinStripRows && rows * nb * elem_bytes > budget_bytes) rows /= 2;
  return rows * nb * elem_bytes <= budget_bytes ? rows : 0;
}

int64_t mean_lse_strip_budget_bytes() {
  const char* forced = std::getenv("PYHYPERSPHERE_STRIP_BUDGET_BYTES");
  if (forced == nullptr || *forced == '\0') return kDefaultStripBudgetBytes;
  char* end = nullptr;
  const long long value = std::strtoll(forced, &end, 10);
  return (end != nullptr && *end == '\0' && value >= 0) ? value : kDefaultStripBudgetBytes;
}

template <typename T>
void mean_lse_strips(const T* a, int64_t na, const T* b, int64_t nb, int64_t d, T scale,
                     int64_t strip_rows, bool skip_positives, const RowWeight& row_weight,
                     std::vector<double>& lse, T* grad_a, T* grad_b) {
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  const int64_t strips = ceil_div(na, strip_rows);
  const int64_t cols = cpu_block_rows(nb);
  const int64_t col_blocks = ceil_div(nb, cols);
  // Running (max, sum) of every row, in double; each strip owns its rows.
  std::vector<double> max(na, -std::numeric_limits<double>::infinity()), sum(na, 0.0);
  std::vector<ScheduledTile> tiles;
  for (int64_t k = 0; k < strips; ++k) tiles.push_back({BlockPair{k, 0}, -1, -1});
  BlockTurns turns(col_blocks);  // grad_b's column blocks, updated in strip order
  // Without grad_b nothing of the strip's logits is kept (online_strip): one column block.
  const bool online = grad_a != nullptr && grad_b == nullptr;
  const int64_t workspace = online ? strip_rows * cols + 3 * strip_rows
                                   : strip_rows * nb + strip_rows + strip_rows * col_blocks;
  const int64_t max_workers =
      std::max<int64_t>(1, kAllStripsBudgetBytes / (workspace * static_cast<int64_t>(sizeof(T))));
  run_ordered_tiles<T>(tiles, turns, workspace, [&](const ScheduledTile& tile, T* ws) {
    const int64_t k = tile.blocks.a, i0 = k * strip_rows;
    const int64_t rows = std::min(strip_rows, na - i0);
    const T* a_rows = a + i0 * d;
    if (online) {
      T* acc = grad_a + i0 * d;
      online_strip(a_rows, rows, i0, b, nb, d, scale, cols, skip_positives, ws, max.data() + i0,
                   sum.data() + i0, acc);
      for (int64_t i = 0; i < rows; ++i) {
        const double total = sum[i0 + i];
        lse[i0 + i] = total > 0 ? max[i0 + i] + std::log(total) : -std::numeric_limits<double>::infinity();
        // acc holds sum_j e^(s_ij - max_i) b_j: the weights e^(s_ij - lse_i) w_i are 1 / sum_i of them.
        const T factor = total > 0 ? static_cast<T>(row_weight(i0 + i, lse[i0 + i]) / total) : T(0);
        for (int64_t c = 0; c < d; ++c) acc[i * d + c] *= factor;
      }
      return true;
    }
    T* strip = ws;
    T* row_sum = ws + strip_rows * nb;    // a column block's exp sums
    T* block_max = row_sum + strip_rows;  // [col_blocks][strip_rows]: maxima, then factors
    for (int64_t c = 0; c < col_blocks; ++c) {
      const int64_t j0 = c * cols, n = std::min(cols, nb - j0);
      T* s = strip + j0;
      T* m = block_max + c * strip_rows;
      gemm_row_major<T>(false, true, rows, n, d, scale, a_rows, d, b + j0 * d, d, T(0), s, nb);
      if (skip_positives) set_positives(s, rows, nb, i0, j0, n, kNegInf);
      logit_max(s, rows, n, nb, m, nullptr, false);
      // A row whose only column here is its skipped positive has no terms: a finite shift
      // for the exps, and a zero sum.  (The float exp clamps its argument: e^-inf is 1.6e-38.)
      int64_t empty_row = -1;
      for (int64_t i = 0; i < rows; ++i) {
        if (m[i] == kNegInf) m[i] = T(0), empty_row = i;
      }
      logit_exp_store(s, rows, n, nb, m, row_sum);
      if (skip_positives) set_positives(s, rows, nb, i0, j0, n, T(0));
      if (empty_row >= 0) row_sum[empty_row] = 0;
      merge_rows(m, row_sum, rows, max.data() + i0, sum.data() + i0);
      if (empty_row >= 0) m[empty_row] = kNegInf;  // its weights' factor below: 0
    }
    for (int64_t i = 0; i < rows; ++i) {
      lse[i0 + i] = sum[i0 + i] > 0 ? max[i0 + i] + std::log(sum[i0 + i])
                                    : -std::numeric_limits<double>::infinity();
    }
    if (grad_a == nullptr && grad_b == nullptr) return true;
    std::vector<double> weight(rows, 0.0);  // 0 for a row without partners (lse -inf)
    for (int64_t i = 0; i < rows; ++i) {
      if (sum[i0 + i] > 0) weight[i] = row_weight(i0 + i, lse[i0 + i]);
    }
    for (int64_t c = 0; c < col_blocks; ++c) {
      const int64_t j0 = c * cols, n = std::min(cols, nb - j0);
      T* p = strip + j0;
      // P = exp(s - m_c) exp(m_c - lse) w: the stored exps times a factor per row
      // (m_c <= lse: no overflow; m_c -inf for a row without terms here: 0).
      T* factor = block_max + c * strip_rows;
      for (int64_t i = 0; i < rows; ++i) {
        const double m_c = static_cast<double>(factor[i]);
        factor[i] = weight[i] == 0.0 || m_c == -std::numeric_limits<double>::infinity()
                        ? T(0)
                        : static_cast<T>(std::exp(m_c - lse[i0 + i]) * weight[i]);
      }
      logit_scale_rows(p, rows, n, nb, factor);
      if (grad_a != nullptr) {
        gemm_row_major<T>(false, false, rows, d, n, T(1), p, nb, b + j0 * d, d, T(1),
                          grad_a + i0 * d, d);
      }
      if (grad_b != nullptr) {
        if (!turns.wait(c, k)) return false;
        gemm_row_major<T>(true, false, n, d, rows, T(1), p, nb, a_rows, d, T(1), grad_b + j0 * d,
                          d);
        turns.finish(c);
      }
    }
    return true;
  }, max_workers);
}

template void mean_lse_strips<float>(const float*, int64_t, const float*, int64_t, int64_t, float,
                                     int64_t, bool, const RowWeight&, std::vector<double>&, float*,
                                     float*);
template void mean_lse_strips<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                      double, int64_t, bool, const RowWeight&,
                                      std::vector<double>&, double*, double*);

}  // namespace cpu
}  // namespace pyhypersphere
