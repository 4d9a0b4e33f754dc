// CPU SigLIP kernel (contract: csrc/ops.h): the loss and every gradient in one pass
// over the pair tiles, never holding the logit matrix.
//
// Per tile of rows x_i (one block of x) against rows y_j (one block of y): one Gram GEMM
// S = X Y^T, then an epilogue that turns each entry into its loss term softplus(-z l)
// (summed per row) and, in place, its weight w_ij = coef_i dsoftplus/dl (summing the
// weights and weights times S for d/dt and d/db), then grad_x += t W Y and
// grad_y += t W^T X: three GEMMs, as the dense formula's forward and backward, but with
// O(tile) memory per thread instead of N x N logits, probabilities and masks.  A weight
// depends on its own logit only (no log-sum-exp), so nothing waits for a whole row.
// Tiles run in the ordered schedule of ordered_tiles.h: every accumulator is updated in
// schedule order (deterministic at any thread count); the (t, b) sums are kept per tile
// and added in tile order at the end.  Extra memory O((N_x + N_y) d).
#include "../ops.h"
#include "../tile_schedule.h"
#include "../uniform_rows.h"
#include "cpu_isa.h"
#include "float_vec.h"
#include "ordered_tiles.h"
#include "tile_gemm.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace pyhypersphere {

namespace {

using namespace cpu::vec;  // NOLINT: the vector helpers are the epilogue's vocabulary

// log1p(e) for e in [0, 1] as 2 atanh(w), w = e / (2 + e) <= 1/3: the odd series to w^13
// (truncation below 1.5e-8 relative), accurate for tiny e too, where log(1 + e) rounds
// to 0.  Written for a GCC vector of 16 floats.
PYHS_INLINE f32x16 log1p_unit16(f32x16 e) {
  const f32x16 w = e / (e + 2.0f);
  const f32x16 w2 = w * w;
  f32x16 p = w2 * (1.0f / 13.0f) + 1.0f / 11.0f;
  p = p * w2 + 1.0f / 9.0f;
  p = p * w2 + 1.0f / 7.0f;
  p = p * w2 + 1.0f / 5.0f;
  p = p * w2 + 1.0f / 3.0f;
  p = p * w2 + 1.0f;
  return 2.0f * w * p;
}

// One pair's loss term softplus(u), u = -z l, and d/dl of it, -z sigmoid(u): the exact
// scalar form (tails, positives, double tiles).
template <typename T>
PYHS_INLINE void pair_terms(T l, bool positive, T& loss, T& dl) {
  const T u = positive ? -l : l;
  const T e = std::exp(-std::fabs(u));
  loss = (u > 0 ? u : T(0)) + std::log1p(e);
  const T sigmoid = (u >= 0 ? T(1) : e) / (T(1) + e);
  dl = positive ? -sigmoid : sigmoid;
}

// Per-row sums of one tile row: its loss terms, weights times Gram entries, weights.
template <typename T>
struct RowSums {
  T loss = 0, weighted_gram = 0, weight = 0;
};

// Columns [j0, j1) of a tile row in the scalar form; `positive` is the positive's column.
template <typename T>
PYHS_INLINE void scalar_range(T* s, int64_t j0, int64_t j1, int64_t positive, T t, T b, T coef,
                              bool weights, RowSums<T>& sums) {
  for (int64_t j = j0; j < j1; ++j) {
    const T gram = s[j];
    T loss, dl;
    pair_terms(t * gram + b, j == positive, loss, dl);
    sums.loss += loss;
    if (weights) {
      const T w = coef * dl;
      sums.weighted_gram += w * gram;
      sums.weight += w;
      s[j] = w;
    }
  }
}

// The epilogue of a tile of Gram entries s_ij = <x_i, y_j> (row-major, leading dimension
// ld): row_loss[i] = sum_j softplus(-z_ij l_ij); with `weights`, s_ij <- w_ij and
// tb[0] += sum w_ij s_ij, tb[1] += sum w_ij.  Row i's positive is column i + positive_offset
// (when inside the tile).  Float rows: 16-lane vectors of negatives (the polynomial exp
// and log1p), the 16 columns holding the positive and the tail in the scalar form.
template <typename T>
PYHS_INLINE void siglip_tile_impl(T* tile, int64_t rows, int64_t cols, int64_t ld, T t, T b,
                                  int64_t positive_offset, const T* coef, bool weights,
                                  T* row_loss, double* tb) {
  double weighted_gram = 0, weight = 0;
  for (int64_t i = 0; i < rows; ++i) {
    T* s = tile + i * ld;
    const int64_t positive = i + positive_offset;
    const T c = weights ? coef[i] : T(0);
    RowSums<T> sums;
    int64_t j = 0;
    if constexpr (std::is_same_v<T, float>) {
      const f32x16 zero = f32x16{}, one = f32x16{} + 1.0f;
      const f32x16 vt = zero + t, vb = zero + b, vc = zero + c;
      f32x16 loss = zero, wg = zero, w = zero;
      for (; j + kLanes <= cols; j += kLanes) {
        if (positive >= j && positive < j + kLanes) {
          scalar_range(s, j, j + kLanes, positive, t, b, c, weights, sums);
          continue;
        }
        const f32x16 gram = load16(s + j);
        const f32x16 u = gram * vt + vb;  // a negative: u = l
        const f32x16 e = exp16(u < 0 ? u : -u);  // e^-|u|, a normal float (exp16 clamps at e^-87)
        // Denormal operands cost microcode assists (a 2x slower tile at t = 200): log1p(e) is
        // e itself below 1e-18, and a sigmoid below 1e-30 weighs nothing next to the tile's
        // other weights (the largest are coef), so neither reaches the denormal range.
        const auto tiny = e < 1e-18f;
        loss += (u > 0 ? u : zero) + (tiny ? e : log1p_unit16(tiny ? one : e));
        if (weights) {
          const f32x16 sigmoid = (u >= 0 ? one : e) / (one + e);
          const f32x16 wij = vc * (sigmoid < 1e-30f ? zero : sigmoid);
          wg += wij * gram;
          w += wij;
          store16(s + j, wij);
        }
      }
      sums.loss += sum_lanes(loss);
      sums.weighted_gram += sum_lanes(wg);
      sums.weight += sum_lanes(w);
    }
    scalar_range(s, j, cols, positive, t, b, c, weights, sums);
    row_loss[i] = sums.loss;
    weighted_gram += sums.weighted_gram;
    weight += sums.weight;
  }
  tb[0] += weighted_gram;
  tb[1] += weight;
}

// The float epilogue once per x86 ISA level (cpu_isa.h).
#define PYHS_SIGLIP_TILE(suffix, target_attribute)                                             \
  target_attribute void siglip_tile_##suffix(float* tile, int64_t rows, int64_t cols,          \
                                             int64_t ld, float t, float b, int64_t offset,     \
                                             const float* coef, bool weights, float* row_loss, \
                                             double* tb) {                                     \
    siglip_tile_impl(tile, rows, cols, ld, t, b, offset, coef, weights, row_loss, tb);         \
  }
PYHS_SIGLIP_TILE(baseline, )
#ifdef PYHS_X86_DISPATCH
PYHS_SIGLIP_TILE(avx2, PYHS_TARGET_AVX2)
PYHS_SIGLIP_TILE(avx512, PYHS_TARGET_AVX512)
#endif

void siglip_tile(float* tile, int64_t rows, int64_t cols, int64_t ld, float t, float b,
                 int64_t offset, const float* coef, bool weights, float* row_loss, double* tb) {
#ifdef PYHS_X86_DISPATCH
  switch (cpu::float_loop_isa()) {
    case cpu::Isa::kAvx512:
      return siglip_tile_avx512(tile, rows, cols, ld, t, b, offset, coef, weights, row_loss, tb);
    case cpu::Isa::kAvx2:
      return siglip_tile_avx2(tile, rows, cols, ld, t, b, offset, coef, weights, row_loss, tb);
    default: break;
  }
#endif
  siglip_tile_baseline(tile, rows, cols, ld, t, b, offset, coef, weights, row_loss, tb);
}

void siglip_tile(double* tile, int64_t rows, int64_t cols, int64_t ld, double t, double b,
                 int64_t offset, const double* coef, bool weights, double* row_loss, double* tb) {
  siglip_tile_impl(tile, rows, cols, ld, t, b, offset, coef, weights, row_loss, tb);
}

// x's blocks then y's blocks (the schedule's "x" and "queue" sides); x's block k and y's
// block k start at the same row, so the positives (x_i, y_i) lie on the diagonal of the
// tiles {k, x_blocks + k}.
template <typename T>
struct SiglipRows {
  SiglipRows(const at::Tensor& xs, const at::Tensor& ys, const at::Tensor& coefs, double t_value,
             double b_value)
      : x(xs.data_ptr<T>()),
        y(ys.data_ptr<T>()),
        coef(coefs.data_ptr<T>()),
        nx(xs.size(0)),
        ny(ys.size(0)),
        d(xs.size(1)),
        block(cpu::cpu_block_rows(std::max(nx, ny))),
        x_blocks(blocks_for(nx, block)),
        y_blocks(blocks_for(ny, block)),
        t(static_cast<T>(t_value)),
        b(static_cast<T>(b_value)) {}

  bool is_x(int64_t k) const { return k < x_blocks; }
  int64_t first_row(int64_t k) const { return (is_x(k) ? k : k - x_blocks) * block; }
  int64_t size(int64_t k) const { return std::min(block, (is_x(k) ? nx : ny) - first_row(k)); }
  const T* rows(int64_t k) const { return (is_x(k) ? x : y) + first_row(k) * d; }

  const T* x;
  const T* y;
  const T* coef;
  int64_t nx, ny, d, block, x_blocks, y_blocks;
  T t, b;
};

// Every tile once: the rows' losses into loss_rows (double), and with `weights` the
// gradients into gx / gy (nullptr: not asked for) and the (t, b) sums into tb.
template <typename T>
void siglip_pass(const SiglipRows<T>& r, bool weights, double* loss_rows, T* gx, T* gy, double* tb) {
  const auto tiles = cpu::number_tiles(
      make_tile_rounds(r.x_blocks, r.y_blocks, false, 0, 1), r.x_blocks + r.y_blocks,
      [](const BlockPair&) { return true; }, [&](const BlockPair&) { return gy != nullptr; });
  std::vector<double> tile_tb(2 * tiles.size(), 0.0);
  cpu::BlockTurns turns(r.x_blocks + r.y_blocks);
  const int64_t workspace = r.block * r.block + r.block;  // the tile and its row losses
  cpu::run_ordered_tiles<T>(tiles, turns, workspace, [&](const cpu::ScheduledTile& tile, T* ws) {
    const int64_t kx = tile.blocks.a, ky = tile.blocks.b;
    const int64_t rows_x = r.size(kx), rows_y = r.size(ky);
    const int64_t ix = r.first_row(kx);
    T* s = ws;
    T* row_loss = ws + r.block * r.block;
    cpu::gemm_row_major<T>(false, true, rows_x, rows_y, r.d, T(1), r.rows(kx), r.d, r.rows(ky), r.d,
                           T(0), s, rows_y);
    siglip_tile(s, rows_x, rows_y, rows_y, r.t, r.b, ix - r.first_row(ky), r.coef + ix, weights,
                row_loss, tile_tb.data() + 2 * (&tile - tiles.data()));
    if (!turns.wait(kx, tile.turn_a)) return false;
    for (int64_t i = 0; i < rows_x; ++i) loss_rows[ix + i] += row_loss[i];
    if (weights && gx != nullptr) {
      cpu::gemm_row_major<T>(false, false, rows_x, r.d, rows_y, r.t, s, rows_y, r.rows(ky), r.d, T(1),
                             gx + ix * r.d, r.d);
    }
    turns.finish(kx);
    if (tile.turn_b < 0) return true;
    if (!turns.wait(ky, tile.turn_b)) return false;
    cpu::gemm_row_major<T>(true, false, rows_y, r.d, rows_x, r.t, s, rows_y, r.rows(kx), r.d, T(1),
                           gy + r.first_row(ky) * r.d, r.d);
    turns.finish(ky);
    return true;
  });
  for (size_t k = 0; k < tiles.size(); ++k) {  // in tile order: the same sums at any thread count
    tb[0] += tile_tb[2 * k];
    tb[1] += tile_tb[2 * k + 1];
  }
}

using SiglipResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

SiglipResult siglip_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& t,
                        const at::Tensor& b, const at::Tensor& coef, bool grad_x, bool grad_y,
                        bool grad_tb) {
  check_siglip_args(x, y, t, b, coef);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "siglip_loss: x must be on the CPU for the CPU kernel");
  const at::ScalarType acc_type = accumulate_dtype(x.scalar_type());
  const at::Tensor zx = x.to(acc_type).contiguous(), zy = y.to(acc_type).contiguous();
  const at::Tensor c = coef.to(at::TensorOptions().dtype(acc_type).device(at::kCPU)).contiguous();
  const auto acc = zx.options();
  const double t_value = t.item<double>(), b_value = b.item<double>();
  const bool weights = grad_x || grad_y || grad_tb;
  at::Tensor gx = grad_x ? at::zeros(zx.sizes(), acc) : at::empty({0}, acc);
  at::Tensor gy = grad_y ? at::zeros(zy.sizes(), acc) : at::empty({0}, acc);
  std::vector<double> loss_rows(zx.size(0), 0.0);
  double tb[2] = {0.0, 0.0};
  const bool finite = std::isfinite(t_value) && std::isfinite(b_value) &&
                      at::isfinite(zx).all().item<bool>() && at::isfinite(zy).all().item<bool>();
  if (finite) {
    AT_DISPATCH_FLOATING_TYPES(acc_type, "siglip_cpu", [&] {
      const SiglipRows<scalar_t> r(zx, zy, c, t_value, b_value);
      siglip_pass(r, weights, loss_rows.data(), grad_x ? gx.data_ptr<scalar_t>() : nullptr,
                  grad_y ? gy.data_ptr<scalar_t>() : nullptr, tb);
    });
  } else {  // the polynomial exp would clamp a NaN to a finite weight: NaN out explicitly
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::fill(loss_rows.begin(), loss_rows.end(), nan);
    tb[0] = tb[1] = nan;
    gx.fill_(nan);
    gy.fill_(nan);
  }
  // In row order, in double: the same total at any thread count.
  const at::Tensor c64 = c.to(at::kDouble);
  const double* coefs = c64.data_ptr<double>();
  double sum = 0;
  for (size_t i = 0; i < loss_rows.size(); ++i) sum += coefs[i] * loss_rows[i];
  const at::Tensor rows = at::tensor(loss_rows, acc.dtype(at::kDouble));
  const at::Tensor total = at::scalar_tensor(sum, acc.dtype(at::kDouble)).to(acc_type);
  const at::Tensor grad_tb_out = grad_tb ? at::tensor({tb[0], tb[1]}, acc.dtype(at::kDouble)).to(acc_type)
                                         : at::empty({0}, acc);
  return {total, rows.to(acc_type), gx, gy, grad_tb_out};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) {
  m.impl("siglip", &siglip_cpu);
}

}  // namespace pyhypersphere
