// CPU uniformity kernel: tiled Gram products through BLAS, fused with the exp, a
// shifted (log-sum-exp) reduction and, when asked, the gradient in the same pass.
//
// Why the gradient is accumulated in the forward pass: d lse / d z_i needs only the
// row sums  s_i = sum_j w_ij  and  a_i = sum_j w_ij z_j  (grad_i ~ s_i z_i - a_i), so one
// pass with three tile GEMMs (Gram, W Z_b, W^T Z_a) gives loss and gradient, where a
// separate backward would redo the Gram GEMM and the exps: 3 GEMMs instead of 1 + 3.
// Only the rows asked for get gradient terms: with a detached queue (MoCo) an x-by-queue
// tile needs the Gram product and W Z_queue only, 2 GEMMs instead of 3.
// The backward is then a scale by the upstream gradient (see pyhypersphere/ops/uniform.py).
#include "../input_checks.h"
#include "../ops.h"
#include "../tile_schedule.h"
#include "../uniform_math.h"
#include "../uniform_rows.h"
#include "ordered_tiles.h"
#include "tile_epilogue.h"
#include "tile_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace pyhypersphere {
namespace {

template <typename T>
class UniformCpuKernel {
 public:
  // The gradient is accumulated only for the rows asked for: x's rows (grad_x), the
  // queue's (grad_queue), or both; they are one contiguous range of the stacked rows.
  UniformCpuKernel(const UniformRows& rows, T t, bool grad_x, bool grad_queue)
      : z_(rows.z.data_ptr<T>()),
        sq_(rows.sq_norm.data_ptr<T>()),
        rows_(rows.z.size(0)),
        d_(rows.z.size(1)),
        n_(rows.n),
        t_(t),
        grad_x_(grad_x),
        grad_queue_(grad_queue),
        grad_begin_(grad_x ? 0 : rows.n),
        grad_end_(grad_queue ? rows.z.size(0) : rows.n),
        block_(cpu::cpu_block_rows(rows.z.size(0))),
        x_blocks_(blocks_for(rows.n, block_)),
        queue_blocks_(blocks_for(rows.k, block_)),
        sum_shift_(x_blocks_ + queue_blocks_, -std::numeric_limits<T>::infinity()),
        grad_shift_(x_blocks_ + queue_blocks_, -std::numeric_limits<T>::infinity()),
        block_sum_(x_blocks_ + queue_blocks_, T(0)) {
    if (grad_x_ || grad_queue_) {
      row_sum_.assign(grad_end_ - grad_begin_, T(0));
      acc_ = at::zeros({grad_end_ - grad_begin_, d_}, rows.z.options());
    }
  }

  // Sums the pair tiles of this part; returns (lse, gradient of the rows asked for, in
  // stacked order, or undefined).
  std::pair<double, at::Tensor> run(bool intra_batch, int64_t part, int64_t num_parts) {
    const int64_t blocks = x_blocks_ + queue_blocks_;
    // Block a always takes the tile's weight total; block b only its gradient terms.
    const std::vector<cpu::ScheduledTile> tiles = cpu::number_tiles(
        make_tile_rounds(x_blocks_, queue_blocks_, intra_batch, part, num_parts), blocks,
        [](const BlockPair&) { return true; },
        [&](const BlockPair& pair) { return block_needs_grad(pair.b) && pair.a != pair.b; });
    cpu::BlockTurns turns(blocks);
    cpu::run_ordered_tiles<T>(tiles, turns, workspace_stride(),
                              [&](const cpu::ScheduledTile& tile, T* ws) {
                                return visit_tile(tile, ws, turns);
                              });
    return finish();
  }

 private:
  int64_t workspace_stride() const { return block_ * block_ + 2 * block_; }
  int64_t block_begin(int64_t b) const {
    return b < x_blocks_ ? b * block_ : n_ + (b - x_blocks_) * block_;
  }
  int64_t block_size(int64_t b) const {
    const int64_t end = b < x_blocks_ ? n_ : rows_;
    return std::min(block_, end - block_begin(b));
  }
  bool block_needs_grad(int64_t b) const { return b < x_blocks_ ? grad_x_ : grad_queue_; }

  // Raises a running shift to at least `shift`, rescaling what is kept under it by
  // `rescale(f)`; returns the factor exp(shift - current) that brings a sum taken under
  // `shift` to the (raised) running shift.
  template <typename Rescale>
  static T raise_shift(T& current, T shift, Rescale&& rescale) {
    if (shift > current) {
      const T f = math::rescale_factor(current, shift);
      current = shift;
      rescale(f);
    }
    return std::exp(shift - current);
  }

  // Returns false if another thread failed and the loop must stop.
  bool visit_tile(const cpu::ScheduledTile& scheduled, T* ws, cpu::BlockTurns& turns) {
    const BlockPair tile = scheduled.blocks;
    const bool diagonal = tile.a == tile.b;
    const int64_t begin_a = block_begin(tile.a), rows_a = block_size(tile.a);
    const int64_t begin_b = block_begin(tile.b), rows_b = block_size(tile.b);
    const T* z_a = z_ + begin_a * d_;
    const T* z_b = z_ + begin_b * d_;
    const T* sq_a = sq_ + begin_a;
    const T* sq_b = sq_ + begin_b;
    T* w = ws;
    T* sum_a = ws + block_ * block_;
    T* sum_b = sum_a + block_;

    // Independent of every other tile: the Gram product and the weights under this
    // tile's own max exponent (so every weight is in (0, 1]).
    cpu::gemm_row_major<T>(false, true, rows_a, rows_b, d_, T(1), z_a, d_, z_b, d_, T(0), w,
                           rows_b);
    const T shift = cpu::tile_max_exponent(w, rows_a, rows_b, rows_b, sq_a, sq_b, t_, diagonal);
    const bool empty = shift == -std::numeric_limits<T>::infinity();  // every weight is 0
    if (!empty) {
      std::fill(sum_a, sum_a + rows_a, T(0));
      std::fill(sum_b, sum_b + rows_b, T(0));
      cpu::tile_weights(w, rows_a, rows_b, rows_b, sq_a, sq_b, t_, shift, sum_a,
                        scheduled.turn_b >= 0 ? sum_b : nullptr, diagonal);
    }

    // Ordered: the accumulators of block a, then of block b.
    if (!turns.wait(tile.a, scheduled.turn_a)) return false;
    if (!empty) {
      add_tile_total(tile.a, shift, sum_a, rows_a, diagonal);
      // A diagonal tile's W is symmetric and holds each pair in both of its rows.
      if (block_needs_grad(tile.a)) accumulate(tile.a, shift, sum_a, w, rows_b, rows_b, z_b, false);
    }
    turns.finish(tile.a);
    if (scheduled.turn_b < 0) return true;
    if (!turns.wait(tile.b, scheduled.turn_b)) return false;
    if (!empty) accumulate(tile.b, shift, sum_b, w, rows_b, rows_a, z_a, true);
    turns.finish(tile.b);
    return true;
  }

  // The loss: every pair's weight once, kept by the tile's first block whatever
  // gradients are asked for, so the lse is the same in every flag combination.
  void add_tile_total(int64_t b, T shift, const T* row_sums, int64_t rows, bool diagonal) {
    T& sum = block_sum_[b];
    const T alpha = raise_shift(sum_shift_[b], shift, [&](T f) { sum *= f; });
    T total = 0;
    for (int64_t i = 0; i < rows; ++i) total += row_sums[i];
    // Diagonal tiles hold each pair twice (the weight matrix is symmetric).
    sum += alpha * (diagonal ? T(0.5) * total : total);
  }

  // Adds a tile's gradient terms to block `b`: its weight sums (taken under `shift`) and
  // W z_other for the tile's row block or W^T z_other for its column block (W is
  // rows_a x rows_b with leading dimension ld_w; `inner` is the other block's row count).
  void accumulate(int64_t b, T shift, const T* sums, const T* w, int64_t ld_w, int64_t inner,
                  const T* z_other, bool transposed) {
    const int64_t first = block_begin(b) - grad_begin_, size = block_size(b);
    T* acc = acc_.data_ptr<T>() + first * d_;
    T* row_sum = row_sum_.data() + first;
    const T alpha = raise_shift(grad_shift_[b], shift, [&](T f) {
      for (int64_t i = 0; i < size * d_; ++i) acc[i] *= f;
      for (int64_t i = 0; i < size; ++i) row_sum[i] *= f;
    });
    for (int64_t i = 0; i < size; ++i) row_sum[i] += alpha * sums[i];
    cpu::gemm_row_major<T>(transposed, false, size, d_, inner, alpha, w, ld_w, z_other, d_, T(1),
                           acc, d_);
  }

  std::pair<double, at::Tensor> finish() {
    const int64_t blocks = x_blocks_ + queue_blocks_;
    T global = -std::numeric_limits<T>::infinity();
    for (int64_t b = 0; b < blocks; ++b) global = std::max(global, sum_shift_[b]);
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      if (sum_shift_[b] > -std::numeric_limits<T>::infinity()) {
        total += double(block_sum_[b]) * std::exp(double(sum_shift_[b]) - double(global));
      }
    }
    const double lse = total > 0 ? double(global) + std::log(total)
                                 : -std::numeric_limits<double>::infinity();
    if (!acc_.defined()) return {lse, at::Tensor()};

    // Every tile that raised a gradient shift also raised its first block's sum shift,
    // so grad_shift_[b] <= global.
    at::Tensor grad = at::empty_like(acc_);
    T* g = grad.data_ptr<T>();
    const T* acc = acc_.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        if (!block_needs_grad(b)) continue;
        const T scale = math::gradient_scale<T>(t_, grad_shift_[b], global, static_cast<T>(total));
        for (int64_t i = block_begin(b); i < block_begin(b) + block_size(b); ++i) {
          const int64_t r = i - grad_begin_;  // row of the accumulators
          const T s = row_sum_[r];
          for (int64_t c = 0; c < d_; ++c) {
            g[r * d_ + c] = scale * (s * z_[i * d_ + c] - acc[r * d_ + c]);
          }
        }
      }
    });
    return {lse, grad};
  }

  const T* z_;
  const T* sq_;
  int64_t rows_, d_, n_;
  T t_;
  bool grad_x_, grad_queue_;
  int64_t grad_begin_, grad_end_;  // the stacked rows whose gradient is accumulated
  int64_t block_, x_blocks_, queue_blocks_;
  // Per block: the running shift and weight total of the loss, and the running shift of
  // the gradient accumulators (row sums and W z products of the block's rows).
  std::vector<T> sum_shift_, grad_shift_, block_sum_, row_sum_;
  at::Tensor acc_;
};

}  // namespace

UniformResult uniform_lse_cpu(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, bool intra_batch, int64_t part, int64_t num_parts,
                              bool grad_x, bool grad_queue) {
  check_uniform_args(x, queue, t, intra_batch, part, num_parts, grad_queue);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "uniform_loss: x must be on the CPU for the CPU kernel");
  const UniformRows rows = plan_uniform_rows(x, queue, intra_batch, t, kFloat32UnitRoundoff);
  if (!rows.finite) return nonfinite_uniform_outputs(x, queue, grad_x, grad_queue);

  return AT_DISPATCH_FLOATING_TYPES(rows.z.scalar_type(), "uniform_lse_cpu", [&] {
    UniformCpuKernel<scalar_t> kernel(rows, static_cast<scalar_t>(t), grad_x, grad_queue);
    auto [lse, grad] = kernel.run(intra_batch, part, num_parts);
    at::Tensor lse_t = at::scalar_tensor(lse, x.options().dtype(at::kDouble));
    // Computed in float64 for precision (far-spread float32 rows): back to float32.
    if (grad.defined()) grad = grad.to(accumulate_dtype(x.scalar_type()));
    return make_uniform_outputs(lse_t, grad, grad_x ? 0 : rows.n, x, queue, grad_x, grad_queue);
  });
}

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) { m.impl("uniform_lse", &uniform_lse_cpu); }

}  // namespace pyhypersphere
