// CUDA uniformity kernels, one pass over row blocks, FlashAttention-2 style (docs/cuda.md,
// "Design"): pack_rows_kernel, uniform_rows_kernel (per pass), lse_kernel, gradient_kernel,
// on one stream, no host synchronization, no atomics: results depend on the shape only.
#include "convert.cuh"
#include "rowblock_mma.cuh"
#include "rowblock_plan.h"
#include "uniform_kernels.h"
#include <algorithm>
#include <cmath>
#include <limits>

namespace pyhypersphere::cuda {
namespace {

constexpr int kSmallThreads = 256;  // the pack, lse and gradient kernels
constexpr int kLseThreads = 512;

template <class T>
__device__ __forceinline__ T negative_infinity() { return -std::numeric_limits<T>::infinity(); }

// Shared memory and threads of the row kernel of a precision and block size: Q (the
// block's rows), K (a column tile) and the tile's norm terms, each double-buffered.
template <class Mma, int kBlockRows>
struct RowGeometry {
  using op_t = typename Mma::op_t;
  static constexpr int kThreads = kBlockRows / RowSlice::kRows * 32, kCols = Mma::kTileCols, kWindow = Mma::kWindow;
  // Rows padded by 16 bytes: ldmatrix's eight row addresses fall in distinct banks.
  static constexpr int kPitch = kWindow + 16 / int(sizeof(op_t)), kChunk = 16 / int(sizeof(op_t));  // per cp.async
  static constexpr int kRowChunks = kWindow / kChunk, kPassRows = kThreads / kRowChunks;  // rows per CTA-wide copy
  static constexpr size_t kQElems = size_t(kBlockRows) * kPitch, kKElems = size_t(kCols) * kPitch;
  static constexpr size_t kSmemBytes = 2 * ((kQElems + kKElems) * sizeof(op_t) + kCols * sizeof(typename Mma::acc_t));
  // x's and the queue's rows are padded to whole row blocks and part blocks.
  static constexpr int kRowAlign = kBlockRows > plan::kPartRows ? kBlockRows : int(plan::kPartRows);
  static_assert(kRowAlign % kCols == 0 && kRowAlign % kBlockRows == 0 && kThreads % kRowChunks == 0 &&
                kCols % kPassRows == 0 && kBlockRows % kPassRows == 0, "whole tiles and rows");
};

template <class op_t, class acc_t>
struct PassParams {
  const op_t* z;      // padded rows [x_pad + queue_pad, ld]
  const acc_t* term;  // their norm terms -t log2(e) ||z||^2; -inf for padding rows
  int64_t ld;         // padded features (whole windows)
  int64_t row_start;  // the pass's first row: 0, or x_pad for the queue pass
  int64_t rows, rows_pad;  // data rows of the pass; padded (the partials' stride)
  bool rows_are_x;
  int64_t x_tiles, queue_start;  // columns: x_tiles tiles of x, then the queue's from row queue_start
  plan::PassPlan plan;
  plan::Parts parts;
  int64_t windows;  // ld / window
  bool with_o;      // accumulate a_i (this pass's gradient is asked for)
  acc_t c2;         // 2 t log2(e)
  // [splits][slices][rows_pad]: shift, sum of weights, with x-x pairs at 1/2; a [splits][rows_pad][ld]
  acc_t *m2, *l, *lw, *a;
};

// The row pass.  kOnline: the lazy online shift (plan::shift_limit); else the static shift 0.
template <class Mma, int kBlockRows, bool kOnline>
__global__ void __launch_bounds__(RowGeometry<Mma, kBlockRows>::kThreads, 1)
    uniform_rows_kernel(PassParams<typename Mma::op_t, typename Mma::acc_t> p) {
  using G = RowGeometry<Mma, kBlockRows>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  constexpr int kCols = G::kCols, kPitch = G::kPitch, kPassRows = G::kPassRows;
  extern __shared__ __align__(128) unsigned char smem[];
  op_t* qbuf = reinterpret_cast<op_t*>(smem);
  op_t* kbuf = qbuf + 2 * G::kQElems;
  acc_t* sqbuf = reinterpret_cast<acc_t*>(kbuf + 2 * G::kKElems);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = layout::group_of(lane), t4 = layout::thread_in_group(lane);
  const bool resident = p.windows == 1;  // Q loaded once per item
  const int my_row = tid / G::kRowChunks, my_chunk = tid % G::kRowChunks;
  const int my_smem = my_row * kPitch + my_chunk * G::kChunk;
  const int64_t pass_stride = kPassRows * p.ld, thread_offset = my_row * p.ld + my_chunk * G::kChunk;

  for (int64_t item = blockIdx.x; item < p.plan.items(); item += gridDim.x) {
    const plan::WorkItem w = plan::work_item(p.plan, item);
    const int64_t row0 = p.row_start + w.row_block * kBlockRows, warp_row0 = row0 + warp * RowSlice::kRows;
    const op_t* const block_rows = p.z + row0 * p.ld + thread_offset;
    // Tiles and columns within a region in 32 bits (the launcher checks the counts).
    const int tiles = int(w.end_tile - w.first_tile), windows = int(p.windows), stages = tiles * windows;
    const int x_tiles = int(std::min<int64_t>(std::max<int64_t>(p.x_tiles - w.first_tile, 0), tiles));
    // A tile's first column within its region (x's or the queue's).
    auto region_col0 = [&](int tile) { return (int(w.first_tile) + tile - (tile < x_tiles ? 0 : int(p.x_tiles))) * kCols; };
    // Stage s: tile s / windows, window s % windows; static trip counts (no loop in the loop).
    auto copy_rows = [&](op_t* dst, const op_t* src, auto rows) {
#pragma unroll
      for (int i = 0; i < decltype(rows)::value / kPassRows; ++i)
        copy_async_16(dst + i * kPassRows * kPitch, src + i * pass_stride);
    };
    // tile_rows: this thread's first chunk of the tile (window 0); tile_terms: its terms.
    auto issue = [&](const op_t* tile_rows, const acc_t* tile_terms, bool first, int step, int win, int buffer) {
      copy_rows(kbuf + buffer * G::kKElems + my_smem, tile_rows + win * G::kWindow, std::integral_constant<int, kCols>{});
      constexpr int kTermChunk = 16 / sizeof(acc_t);
      if (step == windows - 1 && tid < kCols / kTermChunk)
        copy_async_16(sqbuf + buffer * kCols + tid * kTermChunk, tile_terms + tid * kTermChunk);
      if (!resident || first)
        copy_rows(qbuf + (resident ? 0 : buffer) * G::kQElems + my_smem, block_rows + win * G::kWindow,
                  std::integral_constant<int, kBlockRows>{});
      copy_async_commit();
    };
    // The lane's rows g, g + 8 (slots): shift m, weights' bias, limit before m moves (online).
    acc_t row_term[2], m[2], bias[2], limit[2], s[Mma::kS], o[Mma::kO] = {}, l[Mma::kL] = {};
    for (int slot = 0; slot < 2; ++slot) {
      row_term[slot] = p.term[warp_row0 + g + 8 * slot];
      m[slot] = kOnline ? negative_infinity<acc_t>() : acc_t(0);
      bias[slot] = plan::weight_bias(row_term[slot], plan::shift_of(m[slot]));
      limit[slot] = plan::shift_limit(m[slot], row_term[slot]);
    }
    __syncthreads();  // the previous item's warps are done with every buffer
    const int64_t col0 = (x_tiles > 0 ? 0 : p.queue_start) + region_col0(0);
    const op_t* next_rows = p.z + col0 * p.ld + thread_offset;
    const acc_t* next_terms = p.term + col0;
    const op_t* const queue_rows = p.z + p.queue_start * p.ld + thread_offset;
    const int64_t tile_stride = int64_t(kCols) * p.ld;
    if (stages > 0) issue(next_rows, next_terms, true, 0, int(plan::window_at(w.slice, 0, windows)), 0);
    // The next stage's tile (pointers), step and window (plan::window_at, no division).
    int tile = 0, step = 0, next_tile = 0, next_step = 0;
    auto advance = [&] {
      if (++next_step < windows) return;
      next_step = 0;
      const bool to_queue = ++next_tile == x_tiles;
      next_rows = to_queue ? queue_rows : next_rows + tile_stride;
      next_terms = to_queue ? p.term + p.queue_start : next_terms + kCols;
    };
    advance();
    int next_win = int(plan::window_at(w.slice, next_step, windows));
    // This part's column blocks against the warp's rows, per region, for the whole item.
    const int warp_x_row = int(warp_row0 - p.row_start);  // the warp's first row within its pass
    const bool rows_valid = warp_x_row < p.rows;
    const int64_t part_row = warp_x_row / plan::kPartRows;
    const plan::BlockRange held_x = plan::held_blocks(p.parts, p.rows_are_x, true, part_row, p.parts.x_blocks);
    const plan::BlockRange held_queue =
        p.rows_are_x ? plan::held_blocks(p.parts, true, false, part_row, p.parts.queue_blocks) : plan::BlockRange{};
    bool active = false, diagonal = false, x_cols = false, resume = false, exact_max = kOnline;
    int diagonal_key = 0;
    // Online: while a row of the warp may move its shift (plan::needs_exact_max), the main
    // loop leaves with the tile's exponents in s for the exact max and rescale after it,
    // and resumes that stage past its __syncthreads (every warp meets the same one).
    for (int st = 0; st < stages;) {
      for (; st < stages; ++st) {
        const int buffer = int(st & 1);
        const op_t* kb = kbuf + buffer * G::kKElems;
        if (!resume) {
          copy_async_wait_all();
          __syncthreads();
          if (st + 1 < stages) {
            issue(next_rows, next_terms, false, next_step, next_win, buffer ^ 1);
            advance();
            if (++next_win == windows) next_win = 0;
          }
          if (step == 0) {
            // Padding pairs weigh 0 by their -inf term; only self pairs are masked.
            const int c0 = region_col0(tile), offset = warp_x_row - c0;
            x_cols = tile < x_tiles;
            diagonal = p.rows_are_x && x_cols && layout::diagonal_tile(offset, kCols);
            diagonal_key = offset + g - 2 * t4;
            active = rows_valid && (x_cols ? held_x.holds(c0 / int(plan::kPartRows)) : held_queue.holds(c0 / int(plan::kPartRows)));
#pragma unroll
            for (int e = 0; e < Mma::kS; ++e) s[e] = 0;
          }
          if (active) Mma::gram(s, qbuf + (resident ? 0 : buffer) * G::kQElems + warp * RowSlice::kRows * kPitch, kb,
                                kPitch, lane);
          if (active && step == windows - 1) {
            const acc_t* terms = sqbuf + buffer * kCols;
#pragma unroll
            for (int e = 0; e < Mma::kS; ++e) s[e] = plan::partial_exponent2(p.c2, s[e], terms[Mma::elem_col(lane, e)]);
            if (diagonal) {
#pragma unroll
              for (int e = 0; e < Mma::kS; ++e) {
                const int key = layout::self_pair_key(Mma::elem_row(lane, e) - g, Mma::elem_col(lane, e) - 2 * t4);
                if (key != layout::kNeverSelf && key == diagonal_key) s[e] = negative_infinity<acc_t>();
              }
            }
            if (kOnline && exact_max) break;  // to the tile's exact row max
          }
        }
        resume = false;
        if (active && step == windows - 1) {
#pragma unroll
          for (int e = 0; e < Mma::kS; ++e) s[e] = exp2(s[e] + bias[Mma::elem_slot(e)]);
          // x-x pairs are seen from both of their rows: half a pair each in lse.
          Mma::product(o, l, s, kb, kPitch, lane, p.rows_are_x && x_cols ? acc_t(0.5) : acc_t(1), p.with_o);
        }
        if (++step == windows) step = 0, ++tile;
      }
      if (!kOnline || st == stages) break;
      // The tile's row max; the shift moves past the limit (plan::shift_limit).
      acc_t tile_max[2] = {negative_infinity<acc_t>(), negative_infinity<acc_t>()}, scale[2] = {1, 1};
#pragma unroll
      for (int e = 0; e < Mma::kS; ++e) tile_max[Mma::elem_slot(e)] = fmax(tile_max[Mma::elem_slot(e)], s[e]);
      for (int slot = 0; slot < 2; ++slot) {
        tile_max[slot] = fmax(tile_max[slot], __shfl_xor_sync(0xffffffffu, tile_max[slot], 1));
        tile_max[slot] = fmax(tile_max[slot], __shfl_xor_sync(0xffffffffu, tile_max[slot], 2));
        if (!(tile_max[slot] > limit[slot])) continue;  // (a padding row's limit is NaN)
        const plan::OnlineStep<acc_t> next = plan::online_step(m[slot], tile_max[slot] + row_term[slot]);
        m[slot] = next.max;
        scale[slot] = next.scale;
        bias[slot] = plan::weight_bias(row_term[slot], next.shift);
        limit[slot] = plan::shift_limit(m[slot], row_term[slot]);
      }
      // What is held goes to the new shift; TF32's outputs are of rows 2t, 2t + 1 (+ 8).
      acc_t paired[2][2];
      for (int slot = 0; slot < 2; ++slot)
        for (int h = 0; h < 2; ++h) paired[slot][h] = __shfl_sync(0xffffffffu, scale[slot], 4 * (2 * t4 + h));
      auto row_scale = [&](int r) {  // selects, no local array
        const bool hi = r >= 8, odd = r & 1;
        return r % 8 == g ? (hi ? scale[1] : scale[0])
                          : (hi ? (odd ? paired[1][1] : paired[1][0]) : (odd ? paired[0][1] : paired[0][0]));
      };
#pragma unroll
      for (int e = 0; e < Mma::kO; ++e) o[e] *= row_scale(Mma::out_row(lane, e));
#pragma unroll
      for (int e = 0; e < Mma::kL; ++e) l[e] *= row_scale(Mma::sum_row(lane, e));
      exact_max = __any_sync(0xffffffffu, plan::needs_exact_max(m[0]) || plan::needs_exact_max(m[1]));
      resume = true;
    }

    // The item's partials and a_i.
    Mma::finish_sums(l);
    const int64_t base = (w.split * p.plan.slices + w.slice) * p.rows_pad;
    for (int slot = 0; slot < 2; ++slot) {
      const int64_t r = warp_x_row + g + 8 * slot;
      if (t4 == 0 && r < p.rows) p.m2[base + r] = m[slot];
    }
#pragma unroll
    for (int e = 0; e < Mma::kL; ++e) {
      const int64_t r = warp_x_row + Mma::sum_row(lane, e);
      const int c = Mma::sum_col(lane, e);
      if (c < 2 && r < p.rows) (c == 0 ? p.l : p.lw)[base + r] = l[e];
    }
#pragma unroll
    for (int e = 0; e < Mma::kO && p.with_o; ++e) {
      const int64_t r = warp_x_row + Mma::out_row(lane, e);
      if (r < p.rows) p.a[(w.split * p.rows_pad + r) * p.ld + w.slice * G::kWindow + Mma::out_col(lane, e)] = o[e];
    }
  }
}

// Padded row r: x's rows at [0, n), the queue's at [x_pad, x_pad + k), zeros elsewhere and
// in columns [d, ld); term[r] = -c1 ||row||^2 of the values as stored (the operands'
// distances), -inf for a padding row, so that its pairs weigh 0 without a mask.
template <class Mma, class op_t = typename Mma::op_t, class acc_t = typename Mma::acc_t>
__global__ void pack_rows_kernel(const op_t* rows, int64_t n, int64_t k, int64_t d, int64_t x_pad,
                                 int64_t padded_rows, int64_t ld, acc_t c1, op_t* z, acc_t* term) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < padded_rows; r += warps) {
    const int64_t src = r < x_pad ? (r < n ? r : -1) : (r - x_pad < k ? n + (r - x_pad) : -1);
    acc_t s = 0;
    for (int64_t c = lane; c < ld; c += 32) {
      const op_t v = (src >= 0 && c < d) ? Mma::round_operand(rows[src * d + c]) : op_t{};
      z[r * ld + c] = v;
      s += to_acc(v) * to_acc(v);
    }
    for (int offset = 16; offset > 0; offset /= 2) s += __shfl_xor_sync(0xffffffffu, s, offset);
    if (lane == 0) term[r] = src >= 0 ? -c1 * s : negative_infinity<acc_t>();
  }
}

// A CTA-wide reduction of one value per thread, in a fixed tree order.
template <class Op>
__device__ double block_reduce(double* scratch, double v, Op op) {
  scratch[threadIdx.x] = v;
  for (int s = kLseThreads / 2; s > 0; s /= 2) {
    __syncthreads();
    if (threadIdx.x < s) scratch[threadIdx.x] = op(scratch[threadIdx.x], scratch[threadIdx.x + s]);
  }
  __syncthreads();
  const double result = scratch[0];
  __syncthreads();
  return result;
}

// One CTA: lse = log sum over x's rows and splits of lw 2^m2 (slice 0), in double;
// stats[0] = lse in log2 units, for the gradient.
template <class acc_t>
__global__ void __launch_bounds__(kLseThreads) lse_kernel(const acc_t* m2, const acc_t* lw, int64_t splits,
                                                          int64_t slices, int64_t rows, int64_t rows_pad,
                                                          double* lse, double* stats) {
  __shared__ double scratch[kLseThreads];
  auto at = [&](int64_t i) { return (i / rows) * slices * rows_pad + i % rows; };
  double top = -std::numeric_limits<double>::infinity(), total = 0;
  for (int64_t i = threadIdx.x; i < splits * rows; i += kLseThreads) top = fmax(top, double(m2[at(i)]));
  top = block_reduce(scratch, top, [](double a, double b) { return fmax(a, b); });
  for (int64_t i = threadIdx.x; i < splits * rows; i += kLseThreads)
    total += double(lw[at(i)]) * plan::rescale2(double(m2[at(i)]), top);
  total = block_reduce(scratch, total, [](double a, double b) { return a + b; });
  if (threadIdx.x == 0) {
    stats[0] = total > 0 ? top + std::log2(total) : -std::numeric_limits<double>::infinity();
    lse[0] = stats[0] * plan::kLn2;  // a double: the loss lse - log |P| keeps its digits only if lse does
  }
}

// One warp per row of a pass: per feature slice, the splits' partials merged in split
// order under their largest shift, then grad = coefficient (l z - a).
template <class op_t, class acc_t>
__global__ void gradient_kernel(PassParams<op_t, acc_t> p, int64_t d, int window, int64_t grad_row0, double t,
                                const double* stats, acc_t* grad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32), splits = p.plan.splits, slices = p.plan.slices;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < p.rows; r += warps) {
    for (int64_t slice = 0; slice < slices; ++slice) {
      auto at = [&](int64_t split) { return (split * slices + slice) * p.rows_pad + r; };
      acc_t top = negative_infinity<acc_t>(), l = 0;
      for (int64_t s = 0; s < splits; ++s) top = fmax(top, p.m2[at(s)]);
      for (int64_t s = 0; s < splits; ++s) l += p.l[at(s)] * plan::rescale2(p.m2[at(s)], top);
      const acc_t coefficient = static_cast<acc_t>(plan::gradient_coefficient(t, double(top), stats[0]));
      for (int64_t c = slice * window + lane; c < std::min<int64_t>(d, (slice + 1) * window); c += 32) {
        acc_t a = 0;
        for (int64_t s = 0; s < splits; ++s) a += p.a[(s * p.rows_pad + r) * p.ld + c] * plan::rescale2(p.m2[at(s)], top);
        grad[(grad_row0 + r) * d + c] = coefficient * (l * to_acc(p.z[(p.row_start + r) * p.ld + c]) - a);
      }
    }
  }
}

// ---------------------------------------------------------------- host side

int grid_for(int64_t rows) {  // one warp per row of the small kernels
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(plan::ceil_div(rows, kSmallThreads / 32), 1 << 20)));
}

// Where each buffer sits in the workspace (a pass's partials: m2, l, lw back to back).
struct Workspace {
  size_t z = 0, term = 0, stats = 0, x_partials = 0, x_a = 0, queue_partials = 0, queue_a = 0, bytes = 0;
  int64_t x_pad = 0, queue_pad = 0, ld = 0, windows = 0;
  plan::PassPlan x_plan, queue_plan;
};

template <class Mma, int kBlockRows>
Workspace plan_workspace(const UniformProblem& problem) {
  using G = RowGeometry<Mma, kBlockRows>;
  using acc_t = typename Mma::acc_t;
  Workspace w;
  w.x_pad = plan::round_up(problem.n, G::kRowAlign);
  w.queue_pad = plan::round_up(problem.k, G::kRowAlign);
  w.ld = plan::round_up(problem.d, G::kWindow);
  w.windows = w.ld / G::kWindow;
  const int64_t x_tiles = problem.intra_batch ? w.x_pad / G::kCols : 0;
  w.x_plan = plan::make_pass_plan(w.x_pad / kBlockRows, x_tiles + w.queue_pad / G::kCols, problem.grad_x ? w.windows : 1);
  w.queue_plan = plan::make_pass_plan(w.queue_pad / kBlockRows, w.x_pad / G::kCols, w.windows);
  auto take = [&](size_t bytes) {
    const size_t here = w.bytes;
    w.bytes = (w.bytes + bytes + 255) / 256 * 256;
    return here;
  };
  auto pass = [&](const plan::PassPlan& pp, int64_t rows_pad, bool with_a, size_t& partials, size_t& a) {
    partials = take(3 * size_t(pp.splits * pp.slices * rows_pad) * sizeof(acc_t));
    if (with_a) a = take(size_t(pp.splits * rows_pad * w.ld) * sizeof(acc_t));
  };
  const size_t rows = size_t(w.x_pad + w.queue_pad);
  w.z = take(rows * size_t(w.ld) * sizeof(typename Mma::op_t));
  w.term = take(rows * sizeof(acc_t));
  w.stats = take(2 * sizeof(double));
  pass(w.x_plan, w.x_pad, problem.grad_x, w.x_partials, w.x_a);
  if (problem.grad_queue) pass(w.queue_plan, w.queue_pad, true, w.queue_partials, w.queue_a);
  return w;
}

template <class Mma, int kBlockRows>
cudaError_t launch_with(const UniformProblem& problem, void* workspace, void* lse_out, void* grad_out,
                        cudaStream_t stream) {
  using G = RowGeometry<Mma, kBlockRows>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  const Workspace w = plan_workspace<Mma, kBlockRows>(problem);
  // The row kernel counts an item's stages, and rows within a pass, in 32 bits.
  if (w.x_pad + w.queue_pad >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  for (const plan::PassPlan* pp : {&w.x_plan, &w.queue_plan})
    if (pp->tiles_per_split * w.windows >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  unsigned char* base = static_cast<unsigned char*>(workspace);
  auto at = [&](size_t offset) { return reinterpret_cast<acc_t*>(base + offset); };
  op_t* z = reinterpret_cast<op_t*>(base + w.z);
  double* stats = reinterpret_cast<double*>(base + w.stats);
  acc_t* grad = static_cast<acc_t*>(grad_out);
  // c1 > 0 (t > 0 is checked), so padding terms are -inf, never NaN.
  const acc_t c1 = static_cast<acc_t>(problem.t * plan::kLog2E);
  const int64_t padded_rows = w.x_pad + w.queue_pad;
  pack_rows_kernel<Mma><<<grid_for(padded_rows), kSmallThreads, 0, stream>>>(
      static_cast<const op_t*>(problem.rows), problem.n, problem.k, problem.d, w.x_pad, padded_rows, w.ld, c1, z,
      at(w.term));
  // A pass: its partials bound, the row kernel, then the gradient of its rows.
  auto run_pass = [&](PassParams<op_t, acc_t>& p, size_t partials, size_t a, bool grad_rows, int64_t grad_row0) {
    const int64_t count = p.plan.splits * p.plan.slices * p.rows_pad;
    p.m2 = at(partials);
    p.l = p.m2 + count;
    p.lw = p.l + count;
    p.a = p.with_o ? at(a) : nullptr;
    const auto kernel = problem.static_shift ? uniform_rows_kernel<Mma, kBlockRows, false>
                                             : uniform_rows_kernel<Mma, kBlockRows, true>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(G::kSmemBytes));
    if (err != cudaSuccess) return err;
    int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(p.plan.items(), int64_t(1) << 30));
    if (problem.max_ctas > 0) ctas = std::min(ctas, problem.max_ctas);
    kernel<<<static_cast<unsigned>(ctas), G::kThreads, G::kSmemBytes, stream>>>(p);
    if (p.rows_are_x) {  // the x pass: lse first, the gradient needs it
      lse_kernel<acc_t><<<1, kLseThreads, 0, stream>>>(p.m2, p.lw, p.plan.splits, p.plan.slices, p.rows, p.rows_pad,
                                                       static_cast<double*>(lse_out), stats);
    }
    if (grad_rows) {
      gradient_kernel<op_t, acc_t><<<grid_for(p.rows), kSmallThreads, 0, stream>>>(
          p, problem.d, G::kWindow, grad_row0, problem.t, stats, grad);
    }
    return cudaGetLastError();
  };
  PassParams<op_t, acc_t> x{z, at(w.term), w.ld, 0, problem.n, w.x_pad, true,
                            problem.intra_batch ? w.x_pad / G::kCols : 0, w.x_pad, w.x_plan,
                            plan::make_parts(problem.n, problem.k, problem.intra_batch, problem.part, problem.num_parts),
                            w.windows, problem.grad_x, static_cast<acc_t>(2 * problem.t * plan::kLog2E)};
  cudaError_t err = run_pass(x, w.x_partials, w.x_a, problem.grad_x, 0);
  if (err != cudaSuccess || !problem.grad_queue) return err;
  // The queue's rows against x's columns; the same part selection, seen from the queue.
  PassParams<op_t, acc_t> q = x;
  q.row_start = w.x_pad;
  q.rows = problem.k;
  q.rows_pad = w.queue_pad;
  q.rows_are_x = false;
  q.x_tiles = w.x_pad / G::kCols;
  q.plan = w.queue_plan;
  q.with_o = true;
  return run_pass(q, w.queue_partials, w.queue_a, true, problem.n);
}

// f(Mma{}, rows) with the kernel of a precision and block size (0: the default).
template <class F>
auto with_kernel(UniformPrecision precision, int64_t block_rows, F&& f) {
  auto sized = [&](auto mma) {
    return block_rows == 64 ? f(mma, std::integral_constant<int, 64>{}) : f(mma, std::integral_constant<int, 128>{});
  };
  switch (precision) {
    case UniformPrecision::kBf16: return sized(MmaBf16{});
    case UniformPrecision::kFp16: return sized(MmaFp16{});
    case UniformPrecision::kTf32: return sized(MmaTf32<false>{});
    case UniformPrecision::kFp64: return f(MmaF64{}, std::integral_constant<int, 64>{});
    default: return sized(MmaTf32<true>{});
  }
}

}  // namespace

int64_t uniform_block_rows(UniformPrecision precision) { return precision == UniformPrecision::kFp64 ? 64 : 128; }

size_t uniform_shared_memory_bytes(UniformPrecision precision, int64_t block_rows) {
  return with_kernel(precision, block_rows, [](auto mma, auto rows) -> size_t {
    return RowGeometry<decltype(mma), decltype(rows)::value>::kSmemBytes;
  });
}

int64_t uniform_block_rows_for(UniformPrecision precision, int64_t smem_optin) {
  const int64_t rows = uniform_block_rows(precision);
  for (const int64_t candidate : {rows, rows / 2}) {
    if (candidate < 64) break;  // no 32-row kernel
    if (static_cast<int64_t>(uniform_shared_memory_bytes(precision, candidate)) <= smem_optin) return candidate;
  }
  return 0;
}

size_t uniform_workspace_bytes(const UniformProblem& problem) {
  return with_kernel(problem.precision, problem.block_rows, [&](auto mma, auto rows) -> size_t {
    return plan_workspace<decltype(mma), decltype(rows)::value>(problem).bytes;
  });
}

cudaError_t launch_uniform_lse(const UniformProblem& problem, void* workspace, void* lse, void* grad_rows,
                               cudaStream_t stream) {
  const int64_t block_rows = problem.block_rows;
  if (problem.n < 1 || problem.k < 0 || problem.d < 1 || problem.num_parts < 1 || problem.part < 0 ||
      problem.part >= problem.num_parts || problem.max_ctas < 0 ||
      !(block_rows == 0 || block_rows == 64 || block_rows == uniform_block_rows(problem.precision)) ||
      (problem.grad_queue && problem.k == 0) || ((problem.grad_x || problem.grad_queue) && grad_rows == nullptr) ||
      lse == nullptr || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  return with_kernel(problem.precision, block_rows, [&](auto mma, auto rows) {
    return launch_with<decltype(mma), decltype(rows)::value>(problem, workspace, lse, grad_rows, stream);
  });
}

}  // namespace pyhypersphere::cuda
