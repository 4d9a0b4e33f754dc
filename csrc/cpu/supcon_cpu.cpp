// CPU kernel of the supervised contrastive loss (contract in ../ops.h): x's rows
// against each other in tiles through BLAS, never holding the logit matrix or a label mask.
//
// Forward, one pass: per tile of the upper triangle (ordered_tiles.h) one Gram GEMM, the
// rows' (and columns') maxima and shifted exp sums merged into each row's running
// (max, sum), and, comparing the two blocks' labels inside the tile, each row's (and
// column's) sum of positive logits and number of positives.  Backward, a second pass
// (every weight exp(s_ia - lse_i) needs row i's final lse), as the contrastive kernel's:
// per tile the Gram GEMM again, the symmetric weights
//   M_ij = g_i p_ij + g_j p_ji + [label_i == label_j] (h_i + h_j),  M_ii = 0,
// and grad_i += scale M x_j, grad_j += scale M^T x_i.  Deterministic (every block is
// updated in schedule order), extra memory O(N d) plus one tile per thread.
#include "../ops.h"
#include "../tile_schedule.h"
#include "../uniform_rows.h"
#include "logit_epilogue.h"
#include "ordered_tiles.h"
#include "tile_gemm.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

namespace pyhypersphere {
namespace {

// x's rows in blocks; a tile is a pair of blocks a <= b (a == b: the whole square of
// the block, its diagonal skipped).
template <typename T>
struct SupConRows {
  SupConRows(const at::Tensor& rows, const at::Tensor& labels_)
      : x(rows.data_ptr<T>()),
        labels(labels_.data_ptr<int64_t>()),
        n(rows.size(0)),
        d(rows.size(1)),
        block(cpu::cpu_block_rows(n)),
        blocks(blocks_for(n, block)) {}

  int64_t begin(int64_t k) const { return k * block; }
  int64_t size(int64_t k) const { return std::min(block, n - begin(k)); }
  const T* rows(int64_t k) const { return x + begin(k) * d; }
  TileRounds rounds(int64_t part, int64_t num_parts) const {
    return make_tile_rounds(blocks, 0, true, part, num_parts);
  }

  const T* x;
  const int64_t* labels;
  int64_t n, d, block, blocks;
};

// Each row's sum of the tile's logits at columns of the same label, and their number
// (and, with col_sum, each column's); with `diagonal` the entries (i, i) are left out.
template <typename T>
void positive_sums(const T* s, int64_t rows, int64_t cols, int64_t ld, const int64_t* label_row,
                   const int64_t* label_col, T* row_sum, T* row_count, T* col_sum, T* col_count,
                   bool diagonal) {
  if (col_sum != nullptr) {
    std::fill(col_sum, col_sum + cols, T(0));
    std::fill(col_count, col_count + cols, T(0));
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* si = s + i * ld;
    const int64_t li = label_row[i];
    T sum = 0, count = 0;
    for (int64_t j = 0; j < cols; ++j) {  // branch-free, so that it vectorizes
      const T match = label_col[j] == li ? T(1) : T(0);
      sum += match * si[j];
      count += match;
    }
    if (col_sum != nullptr) {
      for (int64_t j = 0; j < cols; ++j) {
        const T match = label_col[j] == li ? T(1) : T(0);
        col_sum[j] += match * si[j];
        col_count[j] += match;
      }
    }
    if (diagonal && i < cols) {  // the anchor itself always matches its own label
      sum -= si[i];
      count -= 1;
    }
    row_sum[i] = sum;
    row_count[i] = count;
  }
}

// Adds [label_i == label_j] (h_row[i] + h_col[j]) to the gradient weights w, except at (i, i)
// with `diagonal`.
template <typename T>
void add_positive_weights(T* w, int64_t rows, int64_t cols, int64_t ld, const int64_t* label_row,
                          const int64_t* label_col, const T* h_row, const T* h_col, bool diagonal) {
  for (int64_t i = 0; i < rows; ++i) {
    T* wi = w + i * ld;
    const int64_t li = label_row[i];
    const T hi = h_row[i];
    for (int64_t j = 0; j < cols; ++j) {
      const T match = label_col[j] == li ? T(1) : T(0);
      wi[j] += match * (hi + h_col[j]);
    }
    if (diagonal && i < cols) wi[i] = 0;
  }
}

struct ForwardRows {
  std::vector<double> lse, positive;
  std::vector<int64_t> count;
};

template <typename T>
ForwardRows forward_rows(const SupConRows<T>& r, T scale, int64_t part, int64_t num_parts) {
  const int64_t n = r.n, bl = r.block;
  std::vector<double> max(n, -std::numeric_limits<double>::infinity()), sum(n, 0.0);
  ForwardRows out{std::vector<double>(n), std::vector<double>(n, 0.0), std::vector<int64_t>(n, 0)};
  const auto tiles = cpu::number_tiles(
      r.rounds(part, num_parts), r.blocks, [](const BlockPair&) { return true; },
      [](const BlockPair& p) { return p.a != p.b; });
  cpu::BlockTurns turns(r.blocks);
  const auto merge = [&](int64_t k, const T* tmax, const T* tsum, const T* pos, const T* cnt) {
    const int64_t lo = r.begin(k), rows = r.size(k);
    cpu::merge_rows(tmax, tsum, rows, max.data() + lo, sum.data() + lo);
    for (int64_t i = 0; i < rows; ++i) {
      out.positive[lo + i] += pos[i];
      out.count[lo + i] += static_cast<int64_t>(cnt[i]);
    }
  };
  cpu::run_ordered_tiles<T>(tiles, turns, bl * bl + 8 * bl, [&](const cpu::ScheduledTile& tile, T* ws) {
    const int64_t ka = tile.blocks.a, kb = tile.blocks.b;
    const int64_t rows_a = r.size(ka), rows_b = r.size(kb);
    const bool diagonal = ka == kb, cols = tile.turn_b >= 0;
    T* s = ws;
    T* v = ws + bl * bl;  // row max, row sum, col max, col sum, row pos, row count, col pos, col count
    cpu::gemm_row_major<T>(false, true, rows_a, rows_b, r.d, scale, r.rows(ka), r.d, r.rows(kb), r.d,
                           T(0), s, rows_b);
    cpu::logit_max(s, rows_a, rows_b, rows_b, v, cols ? v + 2 * bl : nullptr, diagonal);
    cpu::logit_exp_sums(s, rows_a, rows_b, rows_b, v, v + bl, cols ? v + 2 * bl : nullptr,
                        cols ? v + 3 * bl : nullptr, diagonal);
    positive_sums(s, rows_a, rows_b, rows_b, r.labels + r.begin(ka), r.labels + r.begin(kb), v + 4 * bl,
                  v + 5 * bl, cols ? v + 6 * bl : nullptr, cols ? v + 7 * bl : nullptr, diagonal);
    if (!turns.wait(ka, tile.turn_a)) return false;
    merge(ka, v, v + bl, v + 4 * bl, v + 5 * bl);
    turns.finish(ka);
    if (!cols) return true;
    if (!turns.wait(kb, tile.turn_b)) return false;
    merge(kb, v + 2 * bl, v + 3 * bl, v + 6 * bl, v + 7 * bl);
    turns.finish(kb);
    return true;
  });
  for (int64_t i = 0; i < n; ++i) {
    out.lse[i] = sum[i] > 0 ? max[i] + std::log(sum[i]) : -std::numeric_limits<double>::infinity();
  }
  return out;
}

template <typename T>
void backward_rows(const SupConRows<T>& r, T scale, const T* lse, const T* g, const T* h, T* grad,
                   int64_t part, int64_t num_parts) {
  const int64_t bl = r.block;
  const auto tiles = cpu::number_tiles(
      r.rounds(part, num_parts), r.blocks, [](const BlockPair&) { return true; },
      [](const BlockPair& p) { return p.a != p.b; });
  cpu::BlockTurns turns(r.blocks);
  cpu::run_ordered_tiles<T>(tiles, turns, bl * bl, [&](const cpu::ScheduledTile& tile, T* w) {
    const int64_t ka = tile.blocks.a, kb = tile.blocks.b;
    const int64_t rows_a = r.size(ka), rows_b = r.size(kb);
    const int64_t ia = r.begin(ka), ib = r.begin(kb);
    const bool diagonal = ka == kb;
    cpu::gemm_row_major<T>(false, true, rows_a, rows_b, r.d, scale, r.rows(ka), r.d, r.rows(kb), r.d,
                           T(0), w, rows_b);
    cpu::logit_grad_weights(w, rows_a, rows_b, rows_b, lse + ia, g + ia, lse + ib, g + ib, diagonal);
    add_positive_weights(w, rows_a, rows_b, rows_b, r.labels + ia, r.labels + ib, h + ia, h + ib, diagonal);
    if (!turns.wait(ka, tile.turn_a)) return false;
    cpu::gemm_row_major<T>(false, false, rows_a, r.d, rows_b, scale, w, rows_b, r.rows(kb), r.d, T(1),
                           grad + ia * r.d, r.d);
    turns.finish(ka);
    if (tile.turn_b < 0) return true;
    if (!turns.wait(kb, tile.turn_b)) return false;
    cpu::gemm_row_major<T>(true, false, rows_b, r.d, rows_a, scale, w, rows_b, r.rows(ka), r.d, T(1),
                           grad + ib * r.d, r.d);
    turns.finish(kb);
    return true;
  });
}

at::Tensor compute_rows(const at::Tensor& t) {
  return t.to(accumulate_dtype(t.scalar_type())).contiguous();
}

// Each row's number of other rows with its label, without the tiles (the NaN path).
at::Tensor label_counts(const at::Tensor& labels) {
  const auto unique = at::_unique2(labels, /*sorted=*/false, /*return_inverse=*/true,
                                   /*return_counts=*/true);
  return std::get<2>(unique).index_select(0, std::get<1>(unique)) - 1;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> supcon_lse_cpu(const at::Tensor& x,
                                                              const at::Tensor& labels,
                                                              double scale, int64_t part,
                                                              int64_t num_parts) {
  check_supcon_lse_args(x, labels, scale, part, num_parts);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "supcon_lse: x must be on the CPU for the CPU kernel");
  const at::Tensor z = compute_rows(x), y = labels.contiguous();
  const auto acc = z.options();
  if (!at::isfinite(z).all().item<bool>()) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {at::full({x.size(0)}, nan, acc), at::full({x.size(0)}, nan, acc), label_counts(y)};
  }
  return AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "supcon_lse_cpu", [&] {
    const SupConRows<scalar_t> r(z, y);
    const ForwardRows f = forward_rows(r, static_cast<scalar_t>(scale), part, num_parts);
    const auto as_acc = [&](const std::vector<double>& v) {
      return at::tensor(v, acc.dtype(at::kDouble)).to(z.scalar_type());
    };
    return std::tuple<at::Tensor, at::Tensor, at::Tensor>{
        as_acc(f.lse), as_acc(f.positive), at::tensor(f.count, y.options())};
  });
}

at::Tensor supcon_lse_backward_cpu(const at::Tensor& x, const at::Tensor& labels, double scale,
                                   const at::Tensor& lse, const at::Tensor& grad_lse,
                                   const at::Tensor& grad_positive, int64_t part,
                                   int64_t num_parts) {
  check_supcon_lse_backward_args(x, labels, scale, lse, grad_lse, grad_positive, part, num_parts);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "supcon_lse_backward: x must be on the CPU for the CPU kernel");
  const at::Tensor z = compute_rows(x), y = labels.contiguous();
  const auto acc = z.options();
  const auto vec = [&](const at::Tensor& t) { return t.to(acc.dtype()).contiguous(); };
  const at::Tensor l = vec(lse), g = vec(grad_lse), h = vec(grad_positive);
  at::Tensor grad = at::zeros(z.sizes(), acc);
  // -inf is a valid lse (a row without pairs: its weights never occur); NaN or +inf is not.
  if (!at::isfinite(z).all().item<bool>() || at::isnan(l).any().item<bool>() ||
      at::isposinf(l).any().item<bool>()) {
    return grad.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "supcon_lse_backward_cpu", [&] {
    const SupConRows<scalar_t> r(z, y);
    backward_rows(r, static_cast<scalar_t>(scale), l.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                  h.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), part, num_parts);
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) {
  m.impl("supcon_lse", &supcon_lse_cpu);
  m.impl("supcon_lse_backward", &supcon_lse_backward_cpu);
}

}  // namespace pyhypersphere
