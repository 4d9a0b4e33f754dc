// CPU uniformity kernel: tiled Gram products through BLAS, fused with the exp, a
// shifted (log-sum-exp) reduction and, when asked, the gradient in the same pass.
//
// Why the gradient is accumulated in the forward pass: d lse / d z_i needs only the
// row sums  s_i = sum_j w_ij  and  a_i = sum_j w_ij z_j  (grad_i ~ s_i z_i - a_i), so one
// pass with three tile GEMMs (Gram, W Z_b, W^T Z_a) gives loss and gradient, where a
// separate backward would redo the Gram GEMM and the exps: 3 GEMMs instead of 1 + 3.
// The backward is then a scale by the upstream gradient (see pyhypersphere/_ops.py).
#include "../input_checks.h"
#include "../ops.h"
#include "../tile_schedule.h"
#include "../uniform_math.h"
#include "../uniform_rows.h"
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

// Rows per block: large enough for efficient tile GEMMs and L2-resident tiles,
// small enough that small problems still have tiles for every thread.
int64_t cpu_block_rows(int64_t rows) {
  if (rows >= 8192) return 256;
  if (rows >= 2048) return 128;
  return 64;
}

template <typename T>
class UniformCpuKernel {
 public:
  UniformCpuKernel(const UniformRows& rows, T t, bool compute_grad)
      : z_(rows.z.data_ptr<T>()),
        sq_(rows.sq_norm.data_ptr<T>()),
        rows_(rows.z.size(0)),
        d_(rows.z.size(1)),
        n_(rows.n),
        t_(t),
        grad_(compute_grad),
        block_(cpu_block_rows(rows.z.size(0))),
        x_blocks_(blocks_for(rows.n, block_)),
        queue_blocks_(blocks_for(rows.k, block_)),
        shift_(x_blocks_ + queue_blocks_, -std::numeric_limits<T>::infinity()),
        block_sum_(x_blocks_ + queue_blocks_, T(0)) {
    if (grad_) {
      row_sum_.assign(rows_, T(0));
      acc_ = at::zeros({rows_, d_}, rows.z.options());
    }
  }

  // Sums the pair tiles of this part; returns (lse, gradient over all rows or undefined).
  std::pair<double, at::Tensor> run(bool intra_batch, int64_t part, int64_t num_parts) {
    const TileRounds rounds =
        make_tile_rounds(x_blocks_, queue_blocks_, intra_batch, part, num_parts);
    const int threads = at::get_num_threads();
    workspace_.assign(static_cast<size_t>(threads) * workspace_stride(), T(0));
    for (const auto& round : rounds) {
      at::parallel_for(0, static_cast<int64_t>(round.size()), 1, [&](int64_t lo, int64_t hi) {
        T* ws = workspace_.data() + static_cast<size_t>(at::get_thread_num()) * workspace_stride();
        for (int64_t p = lo; p < hi; ++p) visit_tile(round[p], ws);
      });
    }
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

  // Raises block b's shift to at least `shift`, rescaling what it holds; returns the
  // factor exp(shift - M_b) that brings a sum taken under `shift` to the block's shift.
  T raise_block(int64_t b, T shift) {
    if (shift > shift_[b]) {
      const T f = math::rescale_factor(shift_[b], shift);
      shift_[b] = shift;
      block_sum_[b] *= f;
      if (grad_) {
        const int64_t begin = block_begin(b), size = block_size(b);
        T* acc = acc_.data_ptr<T>() + begin * d_;
        for (int64_t i = 0; i < size * d_; ++i) acc[i] *= f;
        for (int64_t i = begin; i < begin + size; ++i) row_sum_[i] *= f;
      }
    }
    return std::exp(shift - shift_[b]);
  }

  void visit_tile(const BlockPair& tile, T* ws) {
    const bool diagonal = tile.a == tile.b;
    const int64_t begin_a = block_begin(tile.a), rows_a = block_size(tile.a);
    const int64_t begin_b = block_begin(tile.b), rows_b = block_size(tile.b);
    const T* z_a = z_ + begin_a * d_;
    const T* z_b = z_ + begin_b * d_;
    T* w = ws;
    T* sum_a = ws + block_ * block_;
    T* sum_b = sum_a + block_;

    const T* sq_a = sq_ + begin_a;
    const T* sq_b = sq_ + begin_b;
    const bool need_col_sums = grad_ && !diagonal;
    auto gram = [&] {
      cpu::gemm_row_major<T>(false, true, rows_a, rows_b, d_, T(1), z_a, d_, z_b, d_, T(0), w,
                             rows_b);
    };
    auto weights = [&](T tile_shift) {
      std::fill(sum_a, sum_a + rows_a, T(0));
      std::fill(sum_b, sum_b + rows_b, T(0));
      return cpu::tile_weights(w, rows_a, rows_b, rows_b, sq_a, sq_b, t_, tile_shift, sum_a,
                               need_col_sums ? sum_b : nullptr, diagonal);
    };

    gram();
    // The blocks' running shifts are the tile's shift when they have one: anything that
    // underflows under it is below float resolution of the final, globally shifted sum.
    T shift = std::max(shift_[tile.a], shift_[tile.b]);
    if (shift == -std::numeric_limits<T>::infinity()) {
      shift = cpu::tile_max_exponent(w, rows_a, rows_b, rows_b, sq_a, sq_b, t_, diagonal);
    }
    if (shift == -std::numeric_limits<T>::infinity()) return;  // every weight is 0
    const T tile_max = weights(shift);
    if (tile_max == -std::numeric_limits<T>::infinity()) return;
    if (tile_max > shift + T(cpu::kMaxExponentAboveShift)) {
      // Rare: this tile holds pairs far closer than any its blocks have seen, and its
      // weights may have saturated.  Redo it under its own max.
      shift = tile_max;
      gram();
      weights(shift);
    }

    if (!grad_) {
      // Diagonal tiles hold each pair twice (the weight matrix is symmetric).
      T total = 0;
      for (int64_t i = 0; i < rows_a; ++i) total += sum_a[i];
      if (diagonal) total *= T(0.5);
      const T alpha = raise_block(tile.a, shift);
      block_sum_[tile.a] += alpha * total;
      return;
    }
    const T alpha_a = raise_block(tile.a, shift);
    for (int64_t i = 0; i < rows_a; ++i) row_sum_[begin_a + i] += alpha_a * sum_a[i];
    T* acc = acc_.data_ptr<T>();
    cpu::gemm_row_major<T>(false, false, rows_a, d_, rows_b, alpha_a, w, rows_b, z_b, d_, T(1),
                           acc + begin_a * d_, d_);
    if (diagonal) return;
    const T alpha_b = raise_block(tile.b, shift);
    for (int64_t j = 0; j < rows_b; ++j) row_sum_[begin_b + j] += alpha_b * sum_b[j];
    cpu::gemm_row_major<T>(true, false, rows_b, d_, rows_a, alpha_b, w, rows_b, z_a, d_, T(1),
                           acc + begin_b * d_, d_);
  }

  std::pair<double, at::Tensor> finish() {
    const int64_t blocks = x_blocks_ + queue_blocks_;
    T global = -std::numeric_limits<T>::infinity();
    for (int64_t b = 0; b < blocks; ++b) global = std::max(global, shift_[b]);

    // Each pair's weight sits in both of its rows' sums in the gradient mode.
    std::vector<double> block_total(blocks, 0.0);
    for (int64_t b = 0; b < blocks; ++b) {
      if (grad_) {
        double s = 0;
        for (int64_t i = block_begin(b); i < block_begin(b) + block_size(b); ++i) s += row_sum_[i];
        block_total[b] = 0.5 * s;
      } else {
        block_total[b] = block_sum_[b];
      }
    }
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      if (shift_[b] > -std::numeric_limits<T>::infinity()) {
        total += block_total[b] * std::exp(double(shift_[b]) - double(global));
      }
    }
    const double lse = total > 0 ? double(global) + std::log(total)
                                 : -std::numeric_limits<double>::infinity();
    if (!grad_) return {lse, at::Tensor()};

    at::Tensor grad = at::empty_like(acc_);
    T* g = grad.data_ptr<T>();
    const T* acc = acc_.data_ptr<T>();
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const T scale = math::gradient_scale<T>(t_, shift_[b], global, static_cast<T>(total));
        for (int64_t i = block_begin(b); i < block_begin(b) + block_size(b); ++i) {
          const T s = row_sum_[i];
          for (int64_t c = 0; c < d_; ++c) {
            g[i * d_ + c] = scale * (s * z_[i * d_ + c] - acc[i * d_ + c]);
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
  bool grad_;
  int64_t block_, x_blocks_, queue_blocks_;
  std::vector<T> shift_, block_sum_, row_sum_, workspace_;
  at::Tensor acc_;
};

}  // namespace

UniformResult uniform_lse_cpu(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                              double t, bool intra_batch, int64_t part, int64_t num_parts,
                              bool compute_grad) {
  check_uniform_args(x, queue, t, intra_batch, part, num_parts);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "uniform_loss: x must be on the CPU for the CPU kernel");
  const UniformRows rows = prepare_uniform_rows(x, queue);
  if (!rows.finite) return nonfinite_uniform_outputs(x, queue, compute_grad);

  return AT_DISPATCH_FLOATING_TYPES(rows.z.scalar_type(), "uniform_lse_cpu", [&] {
    UniformCpuKernel<scalar_t> kernel(rows, static_cast<scalar_t>(t), compute_grad);
    auto [lse, grad] = kernel.run(intra_batch, part, num_parts);
    at::Tensor lse_t = at::scalar_tensor(lse, rows.z.options());
    return make_uniform_outputs(lse_t, grad, x, queue, compute_grad);
  });
}

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) { m.impl("uniform_lse", &uniform_lse_cpu); }

}  // namespace pyhypersphere
