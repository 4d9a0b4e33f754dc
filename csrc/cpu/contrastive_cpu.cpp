// CPU contrastive kernel: the log-sum-exp of every row's logits s_ij = scale <a_i, b_j>
// (and of every column's), in tiles through BLAS, never holding the logit matrix.
//
// Forward: per tile one Gram GEMM, the tile's row (and column) maxima and shifted exp
// sums, merged into each row's running (max, sum) in schedule order.  Backward (a second
// pass, since every weight p_ij = exp(s_ij - lse_i) needs row i's final lse): per tile the
// Gram GEMM again, the weights W (logit_epilogue.h) and grad_a += scale W b,
// grad_b += scale W^T a: three GEMMs, two when only one side needs a gradient.  Tiles
// run in the uniformity kernel's ordered schedule (ordered_tiles.h): deterministic, no
// barriers, extra memory O((N_a + N_b) d).
//
// contrastive_mean_lse (in-batch InfoNCE) and contrastive_lse_row_grad (MoCo: the lse and
// the rows' softmax-weighted columns) run in row strips instead (mean_lse_strips.h: one
// pass, 3 and 2 GEMMs), and fall back to these two passes when a strip would not fit.
#include "../input_checks.h"
#include "../ops.h"
#include "../tile_schedule.h"
#include "../uniform_rows.h"
#include "helper_threads.h"
#include "logit_epilogue.h"
#include "mean_lse_strips.h"
#include "ordered_tiles.h"
#include "tile_gemm.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pyhypersphere {
namespace {

// a's rows then b's rows, in blocks that never straddle the two; a row's index in this
// stacked order addresses the per-row state.  Self pairs: every block against every
// block (upper triangle, diagonal tiles skip i == i); cross pairs: a's blocks against
// b's blocks.  a's block k and b's block k start at the same row of their inputs, so
// the positive pairs (a_i, b_i) lie on the diagonal of the tiles {k, a_blocks + k}.
template <typename T>
struct LogitRows {
  LogitRows(const at::Tensor& a_rows, const at::Tensor& b_rows, bool self, bool skip_pos)
      : a(a_rows.data_ptr<T>()),
        b(b_rows.data_ptr<T>()),
        na(a_rows.size(0)),
        nb(b_rows.size(0)),
        d(a_rows.size(1)),
        block(cpu::cpu_block_rows(self ? na + nb : std::max(na, nb))),
        a_blocks(blocks_for(na, block)),
        b_blocks(blocks_for(nb, block)),
        self_pairs(self),
        skip_positives(skip_pos) {}

  int64_t blocks() const { return a_blocks + b_blocks; }
  bool is_a(int64_t k) const { return k < a_blocks; }
  int64_t begin(int64_t k) const { return is_a(k) ? k * block : na + (k - a_blocks) * block; }
  int64_t size(int64_t k) const { return std::min(block, (is_a(k) ? na : na + nb) - begin(k)); }
  const T* rows(int64_t k) const {
    return is_a(k) ? a + k * block * d : b + (k - a_blocks) * block * d;
  }
  TileRounds rounds(int64_t part, int64_t num_parts) const {
    return self_pairs ? make_tile_rounds(blocks(), 0, true, part, num_parts)
                      : make_tile_rounds(a_blocks, b_blocks, false, part, num_parts);
  }
  // Tile workspace: the logits plus four per-row/column vectors.
  int64_t workspace() const { return block * block + 4 * block; }
  // Whether the tile's entries (i, i) are not pairs: a block against itself with self
  // pairs, or the positive pairs' tile when they are skipped.
  bool skips_diagonal(int64_t ka, int64_t kb) const {
    if (ka == kb) return self_pairs;
    return skip_positives && (kb - ka == a_blocks || ka - kb == a_blocks);
  }

  const T* a;
  const T* b;
  int64_t na, nb, d, block, a_blocks, b_blocks;
  bool self_pairs, skip_positives;
};

// Per-row lse over this part's tiles (-inf for a row without pairs), stacked a then b.
template <typename T>
std::vector<double> forward_lse(const LogitRows<T>& r, T scale, bool lse_b, int64_t part,
                                int64_t num_parts) {
  const int64_t total_rows = r.na + r.nb;
  std::vector<double> max(total_rows, -std::numeric_limits<double>::infinity());
  std::vector<double> sum(total_rows, 0.0);
  // Self pairs: a diagonal tile holds whole rows of its block; other tiles give their
  // column sums to the second block's rows.  Cross pairs: column sums are b's lse.
  const bool self = r.self_pairs;
  const auto tiles = cpu::number_tiles(
      r.rounds(part, num_parts), r.blocks(), [](const BlockPair&) { return true; },
      [&](const BlockPair& p) { return self ? p.a != p.b : lse_b; });
  cpu::BlockTurns turns(r.blocks());
  cpu::run_ordered_tiles<T>(tiles, turns, r.workspace(), [&](const cpu::ScheduledTile& tile, T* ws) {
    const int64_t ka = tile.blocks.a, kb = tile.blocks.b;
    const int64_t rows_a = r.size(ka), rows_b = r.size(kb);
    const bool diagonal = r.skips_diagonal(ka, kb);
    const bool cols = tile.turn_b >= 0;
    T* s = ws;
    T* row_max = ws + r.block * r.block;
    T* row_sum = row_max + r.block;
    T* col_max = row_sum + r.block;
    T* col_sum = col_max + r.block;
    cpu::gemm_row_major<T>(false, true, rows_a, rows_b, r.d, scale, r.rows(ka), r.d, r.rows(kb),
                           r.d, T(0), s, rows_b);
    cpu::logit_max(s, rows_a, rows_b, rows_b, row_max, cols ? col_max : nullptr, diagonal);
    cpu::logit_exp_sums(s, rows_a, rows_b, rows_b, row_max, row_sum, cols ? col_max : nullptr,
                        cols ? col_sum : nullptr, diagonal);
    if (!turns.wait(ka, tile.turn_a)) return false;
    cpu::merge_rows(row_max, row_sum, rows_a, max.data() + r.begin(ka), sum.data() + r.begin(ka));
    turns.finish(ka);
    if (!cols) return true;
    if (!turns.wait(kb, tile.turn_b)) return false;
    cpu::merge_rows(col_max, col_sum, rows_b, max.data() + r.begin(kb), sum.data() + r.begin(kb));
    turns.finish(kb);
    return true;
  });
  std::vector<double> lse(total_rows);
  for (int64_t i = 0; i < total_rows; ++i) {
    lse[i] = sum[i] > 0 ? max[i] + std::log(sum[i]) : -std::numeric_limits<double>::infinity();
  }
  return lse;
}

// Gradients of sum_i g_i lse_i over this part's tiles into grad_a / grad_b (undefined
// when not asked for).  lse and g are stacked a then b; with cross pairs and no
// b-side upstream gradient (`col_terms` false) only the row terms exist.
template <typename T>
void backward_grads(const LogitRows<T>& r, T scale, const T* lse, const T* g, bool col_terms,
                    at::Tensor& grad_a, at::Tensor& grad_b, int64_t part, int64_t num_parts) {
  const bool want_a = grad_a.defined(), want_b = grad_b.defined();
  T* acc_a = want_a ? grad_a.data_ptr<T>() : nullptr;
  T* acc_b = want_b ? grad_b.data_ptr<T>() : nullptr;
  const auto writes = [&](int64_t k) { return r.is_a(k) ? want_a : want_b; };
  const auto tiles = cpu::number_tiles(
      r.rounds(part, num_parts), r.blocks(), [&](const BlockPair& p) { return writes(p.a); },
      [&](const BlockPair& p) { return p.a != p.b && writes(p.b); });
  const auto acc = [&](int64_t k) {
    return r.is_a(k) ? acc_a + k * r.block * r.d : acc_b + (k - r.a_blocks) * r.block * r.d;
  };
  const bool cols = r.self_pairs || col_terms;
  cpu::BlockTurns turns(r.blocks());
  cpu::run_ordered_tiles<T>(tiles, turns, r.workspace(), [&](const cpu::ScheduledTile& tile, T* ws) {
    const int64_t ka = tile.blocks.a, kb = tile.blocks.b;
    const int64_t rows_a = r.size(ka), rows_b = r.size(kb);
    const int64_t ia = r.begin(ka), ib = r.begin(kb);
    T* w = ws;
    cpu::gemm_row_major<T>(false, true, rows_a, rows_b, r.d, scale, r.rows(ka), r.d, r.rows(kb),
                           r.d, T(0), w, rows_b);
    cpu::logit_grad_weights(w, rows_a, rows_b, rows_b, lse + ia, g + ia, cols ? lse + ib : nullptr,
                            cols ? g + ib : nullptr, r.skips_diagonal(ka, kb));
    if (tile.turn_a >= 0) {
      if (!turns.wait(ka, tile.turn_a)) return false;
      cpu::gemm_row_major<T>(false, false, rows_a, r.d, rows_b, scale, w, rows_b, r.rows(kb), r.d,
                             T(1), acc(ka), r.d);
      turns.finish(ka);
    }
    if (tile.turn_b >= 0) {
      if (!turns.wait(kb, tile.turn_b)) return false;
      cpu::gemm_row_major<T>(true, false, rows_b, r.d, rows_a, scale, w, rows_b, r.rows(ka), r.d,
                             T(1), acc(kb), r.d);
      turns.finish(kb);
    }
    return true;
  });
}

// The rows in the accumulation dtype, contiguous (no copy when they already are).
at::Tensor compute_rows(const at::Tensor& t) {
  return t.to(accumulate_dtype(t.scalar_type())).contiguous();
}

bool all_finite(const at::Tensor& a, const at::Tensor& b) {
  return at::isfinite(a).all().item<bool>() && at::isfinite(b).all().item<bool>();
}

}  // namespace

ContrastiveLseResult contrastive_lse_cpu(const at::Tensor& a, const at::Tensor& b, double scale,
                                         bool self_pairs, bool lse_b, int64_t part,
                                         int64_t num_parts, bool skip_positives) {
  check_contrastive_args(a, b, scale, self_pairs, lse_b, part, num_parts);
  TORCH_CHECK_VALUE(a.device().is_cpu(), "contrastive_lse: a must be on the CPU for the CPU kernel");
  const cpu::SerialScope serial;  // ATen calls on O(N d) buffers inline (helper_threads.h)
  const at::Tensor za = compute_rows(a), zb = compute_rows(b);
  const auto acc = za.options();
  if (!all_finite(za, zb)) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {at::full({a.size(0)}, nan, acc), lse_b ? at::full({b.size(0)}, nan, acc) : at::empty({0}, acc)};
  }
  return AT_DISPATCH_FLOATING_TYPES(za.scalar_type(), "contrastive_lse_cpu", [&] {
    const LogitRows<scalar_t> r(za, zb, self_pairs, skip_positives);
    const std::vector<double> lse =
        forward_lse(r, static_cast<scalar_t>(scale), lse_b, part, num_parts);
    const at::Tensor all = at::tensor(lse, acc.dtype(at::kDouble)).to(za.scalar_type());
    return ContrastiveLseResult{all.narrow(0, 0, r.na).clone(),
                                lse_b ? all.narrow(0, r.na, r.nb).clone() : at::empty({0}, acc)};
  });
}

ContrastiveGradResult contrastive_lse_backward_cpu(
    const at::Tensor& a, const at::Tensor& b, double scale, bool self_pairs,
    const at::Tensor& lse_a, const at::Tensor& lse_b, const at::Tensor& grad_lse_a,
    const at::Tensor& grad_lse_b, int64_t part, int64_t num_parts, bool grad_a, bool grad_b,
    bool skip_positives) {
  check_contrastive_backward_args(a, b, scale, self_pairs, lse_a, lse_b, grad_lse_a, grad_lse_b,
                                  part, num_parts);
  TORCH_CHECK_VALUE(a.device().is_cpu(), "contrastive_lse_backward: a must be on the CPU for the CPU kernel");
  const cpu::SerialScope serial;  // ATen calls on O(N d) buffers inline (helper_threads.h)
  const at::Tensor za = compute_rows(a), zb = compute_rows(b);
  const auto acc = za.options();
  at::Tensor ga = grad_a ? at::zeros(za.sizes(), acc) : at::Tensor();
  at::Tensor gb = grad_b ? at::zeros(zb.sizes(), acc) : at::Tensor();
  const auto outputs = [&] {
    return ContrastiveGradResult{ga.defined() ? ga : at::empty({0}, acc),
                                 gb.defined() ? gb : at::empty({0}, acc)};
  };
  if (!grad_a && !grad_b) return outputs();
  // b's side of the weights: always with self pairs, with cross pairs when b's lse has
  // an upstream gradient.
  const bool col_terms = self_pairs || grad_lse_b.numel() > 0;
  const auto stacked = [&](const at::Tensor& for_a, const at::Tensor& for_b) {
    const at::Tensor b_part = for_b.numel() > 0 ? for_b : at::zeros({b.size(0)}, acc);
    return at::cat({for_a.to(acc.dtype()), b_part.to(acc.dtype())}).contiguous();
  };
  const at::Tensor lse = stacked(lse_a, lse_b), g = stacked(grad_lse_a, grad_lse_b);
  // -inf is a valid lse (a row without pairs in this part: its weights never occur);
  // NaN or +inf is not, and would pass the clamped float exp as a finite weight.
  const bool lse_valid = !(at::isnan(lse).any().item<bool>() || at::isposinf(lse).any().item<bool>());
  if (!all_finite(za, zb) || !lse_valid) {
    if (ga.defined()) ga.fill_(std::numeric_limits<double>::quiet_NaN());
    if (gb.defined()) gb.fill_(std::numeric_limits<double>::quiet_NaN());
    return outputs();
  }
  AT_DISPATCH_FLOATING_TYPES(za.scalar_type(), "contrastive_lse_backward_cpu", [&] {
    const LogitRows<scalar_t> r(za, zb, self_pairs, skip_positives);
    backward_grads(r, static_cast<scalar_t>(scale), lse.data_ptr<scalar_t>(),
                   g.data_ptr<scalar_t>(), col_terms, ga, gb, part, num_parts);
  });
  return outputs();
}

ContrastiveRowGradResult contrastive_lse_row_grad_cpu(const at::Tensor& a, const at::Tensor& b,
                                                      double scale, bool skip_positives) {
  check_contrastive_row_grad_args(a, b, scale);
  TORCH_CHECK_VALUE(a.device().is_cpu(), "contrastive_lse_row_grad: a must be on the CPU for the CPU kernel");
  const cpu::SerialScope serial;  // ATen calls on O(N d) buffers inline (helper_threads.h)
  const at::Tensor za = compute_rows(a), zb = compute_rows(b);
  const auto acc = za.options();
  const int64_t na = za.size(0), nb = zb.size(0);
  if (!all_finite(za, zb)) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {at::full({na}, nan, acc), at::full(za.sizes(), nan, acc)};
  }
  at::Tensor o = at::zeros(za.sizes(), acc);
  std::vector<double> lse(na);
  AT_DISPATCH_FLOATING_TYPES(za.scalar_type(), "contrastive_lse_row_grad_cpu", [&] {
    const auto s = static_cast<scalar_t>(scale);
    const int64_t strip_rows = cpu::mean_lse_strip_rows(na, nb, sizeof(scalar_t),
                                                        cpu::mean_lse_strip_budget_bytes());
    if (strip_rows > 0) {
      cpu::mean_lse_strips<scalar_t>(za.data_ptr<scalar_t>(), na, zb.data_ptr<scalar_t>(), nb,
                                     za.size(1), s, strip_rows, skip_positives,
                                     [](int64_t, double) { return 1.0; }, lse,
                                     o.data_ptr<scalar_t>(), nullptr);
      return;
    }
    // A queue too long for a strip: the two passes, the gradient of sum_i lse_i is scale o.
    const LogitRows<scalar_t> r(za, zb, false, skip_positives);
    lse = forward_lse(r, s, false, 0, 1);
    lse.resize(na);
    std::vector<scalar_t> lse_rows(na + nb, scalar_t(0)), ones(na + nb, scalar_t(0));
    for (int64_t i = 0; i < na; ++i) {
      lse_rows[i] = static_cast<scalar_t>(lse[i]);
      ones[i] = scalar_t(1);
    }
    at::Tensor none;
    backward_grads(r, s, lse_rows.data(), ones.data(), false, o, none, 0, 1);
    o.div_(scale);
  });
  return {at::tensor(lse, acc.dtype(at::kDouble)).to(za.scalar_type()), o};
}

ContrastiveMeanLseResult contrastive_mean_lse_cpu(const at::Tensor& a, const at::Tensor& b,
                                                  double scale, bool grad_a, bool grad_b) {
  check_contrastive_mean_lse_args(a, b, scale);
  TORCH_CHECK_VALUE(a.device().is_cpu(), "contrastive_mean_lse: a must be on the CPU for the CPU kernel");
  const cpu::SerialScope serial;  // ATen calls on O(N d) buffers inline (helper_threads.h)
  const at::Tensor za = compute_rows(a), zb = compute_rows(b);
  const auto acc = za.options();
  at::Tensor ga = grad_a ? at::zeros(za.sizes(), acc) : at::empty({0}, acc);
  at::Tensor gb = grad_b ? at::zeros(zb.sizes(), acc) : at::empty({0}, acc);
  if (!all_finite(za, zb)) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    ga.fill_(nan);
    gb.fill_(nan);
    return {at::scalar_tensor(nan, acc), ga, gb};
  }
  const int64_t na = za.size(0), nb = zb.size(0);
  // The positives' logits s_ii, accumulated in double.
  const at::Tensor positive_t =
      (za * zb.narrow(0, 0, na)).sum(1, /*keepdim=*/false, at::kDouble).mul_(scale).contiguous();
  const double* positive = positive_t.data_ptr<double>();
  std::vector<double> lse(na);  // over the negatives
  AT_DISPATCH_FLOATING_TYPES(za.scalar_type(), "contrastive_mean_lse_cpu", [&] {
    const auto s = static_cast<scalar_t>(scale);
    const int64_t strip_rows = cpu::mean_lse_strip_rows(na, nb, sizeof(scalar_t),
                                                        cpu::mean_lse_strip_budget_bytes());
    if (strip_rows > 0) {
      // Upstream gradient 1 / N_a on the cross entropy: the weights e^(s_ij - full_i) / N_a,
      // full_i the lse with the positive, times the products' scale.
      const auto row_weight = [&](int64_t i, double n) {
        return scale / static_cast<double>(na) * std::exp(n - cpu::log_add_exp(n, positive[i]));
      };
      cpu::mean_lse_strips<scalar_t>(za.data_ptr<scalar_t>(), na, zb.data_ptr<scalar_t>(), nb,
                                     za.size(1), s, strip_rows, true, row_weight, lse,
                                     grad_a ? ga.data_ptr<scalar_t>() : nullptr,
                                     grad_b ? gb.data_ptr<scalar_t>() : nullptr);
      return;
    }
    // A queue so long that even the smallest strip's logits exceed the budget: the
    // two-pass kernel, O(tile) memory per thread, every row's weights
    // exp(s_ij - lse with the positive) / N_a on its negatives.
    const LogitRows<scalar_t> r(za, zb, false, true);
    lse = forward_lse(r, s, false, 0, 1);
    lse.resize(na);
    if (!grad_a && !grad_b) return;
    std::vector<scalar_t> lse_rows(na + nb, scalar_t(0)), weights(na + nb, scalar_t(0));
    for (int64_t i = 0; i < na; ++i) {
      lse_rows[i] = static_cast<scalar_t>(cpu::log_add_exp(lse[i], positive[i]));
      weights[i] = scalar_t(1) / static_cast<scalar_t>(na);
    }
    at::Tensor ga_out = grad_a ? ga : at::Tensor(), gb_out = grad_b ? gb : at::Tensor();
    backward_grads(r, s, lse_rows.data(), weights.data(), false, ga_out, gb_out, 0, 1);
  });
  // Row i's loss log(1 + e^(n_i - s_ii)) and its negatives' total weight
  // sum_{j != i} p_ij = e^(n_i - lse_i): the positive's term of the gradient,
  // -(scale / N_a) weight_i b_i (and a_i for b_i), added after the negatives' GEMMs.
  double total = 0;  // in row order: the same sum at any thread count
  std::vector<double> weight(na);
  for (int64_t i = 0; i < na; ++i) {
    const double u = lse[i] - positive[i];
    const double loss = cpu::log_add_exp(u, 0.0);
    total += loss;
    weight[i] = -std::exp(u - loss) * scale / static_cast<double>(na);
  }
  if (grad_a || grad_b) {
    const at::Tensor w = at::tensor(weight, acc.dtype(at::kDouble)).to(za.scalar_type()).unsqueeze(1);
    if (grad_a) ga.addcmul_(w, zb.narrow(0, 0, na));
    if (grad_b) gb.narrow(0, 0, na).addcmul_(w, za);
  }
  return {at::scalar_tensor(total / static_cast<double>(na), acc), ga, gb};
}

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) {
  m.impl("contrastive_lse", &contrastive_lse_cpu);
  m.impl("contrastive_lse_backward", &contrastive_lse_backward_cpu);
  m.impl("contrastive_lse_row_grad", &contrastive_lse_row_grad_cpu);
  m.impl("contrastive_mean_lse", &contrastive_mean_lse_cpu);
}

}  // namespace pyhypersphere
