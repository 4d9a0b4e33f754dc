// CUDA uniformity kernels: one pass over row blocks, flash-attention-2 style.
// Uniformity is an attention forward with Q = K = V = z: per row i,
//   l_i = sum_j exp(e_ij - m_i),  a_i = sum_j exp(e_ij - m_i) z_j,  e_ij = -t ||z_i - z_j||^2
// and d lse / d z_i = -2t exp(m_i - lse) (l_i z_i - a_i).  (plan::gradient_coefficient)
//
// Launch sequence (one stream, no host synchronization):
//   1. pack:      rows -> padded copy (x's rows, then the queue's, each padded to whole row
//                 blocks; features to whole windows; zeros) and the squared norms of the
//                 stored values (TF32-rounded in TF32 mode): the distances are those of
//                 the operands multiplied
//   2. row pass:  one CTA per work item (a block of 128 or 64 rows, a range of column
//                 tiles, a feature slice of a_i; rowblock_plan.h), 16 rows per warp, so
//                 nothing is reduced between warps.  Per column tile: S = Q K^T on mma.sync
//                 over the feature windows (cp.async double buffer; Q stays in shared
//                 memory when one window holds all features), exponents in log2 units,
//                 the online max (or the static shift, plan::static_shift_certified),
//                 P = exp2(e - m), then o += P V and the row sums (P [1 w], one more mma)
//                 with V = the tile's last window, all in registers.  The x pass has x's
//                 rows against x's columns (intra_batch) and the queue's; the queue pass
//                 (for the queue's gradient) the queue's rows against x's columns.
//   3. lse:       one CTA, the x pass's partials in a fixed order, in double
//   4. gradient:  one warp per row: its column splits merged in split order, then the
//                 closed form
// Every sum has a fixed order and there are no atomics; each work item writes its own
// partials, so the results do not depend on the grid size or the timing, and the
// decomposition is a function of the shape only (not of the device).
#include "convert.cuh"
#include "rowblock_mma.cuh"
#include "rowblock_plan.h"
#include "uniform_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pyhypersphere {
namespace cuda {
namespace {

constexpr int kSmallThreads = 256;  // the pack, lse and gradient kernels
constexpr int kLseThreads = 512;

template <class T>
__device__ __forceinline__ T negative_infinity() {
  return -std::numeric_limits<T>::infinity();
}

// Shared memory and thread layout of the row-pass kernel of a precision and block size.
template <class Mma, int kBlockRows>
struct RowGeometry {
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  static constexpr int kThreads = kBlockRows / RowSlice::kRows * 32;
  static constexpr int kCols = Mma::kTileCols;
  static constexpr int kWindow = Mma::kWindow;
  // Rows padded by 16 bytes: ldmatrix's eight row addresses fall in distinct bank groups.
  static constexpr int kPitch = kWindow + 16 / int(sizeof(op_t));
  static constexpr int kChunk = 16 / int(sizeof(op_t));  // elements per cp.async
  static constexpr int kRowChunks = kWindow / kChunk;
  static constexpr size_t kQBytes = size_t(kBlockRows) * kPitch * sizeof(op_t);
  static constexpr size_t kKBytes = size_t(kCols) * kPitch * sizeof(op_t);
  static constexpr size_t kSqBytes = size_t(kCols) * sizeof(acc_t);
  static constexpr size_t kSmemBytes = 2 * (kQBytes + kKBytes + kSqBytes);
  // Rows of x and of the queue are padded to this (whole row blocks and part blocks).
  static constexpr int kRowAlign = kBlockRows > plan::kPartRows ? kBlockRows : int(plan::kPartRows);
  static_assert(kRowAlign % kCols == 0 && kRowAlign % kBlockRows == 0, "tiles within the padding");
  static_assert((kCols * sizeof(acc_t)) % 16 == 0, "norms by cp.async");
};

template <class op_t, class acc_t>
struct PassParams {
  const op_t* z;       // padded rows [x_pad + queue_pad, ld]
  const acc_t* term;   // their norm terms -t log2(e) ||z||^2; -inf for padding rows
  int64_t ld;          // padded features (whole windows)
  int64_t row_start;   // padded index of the pass's first row (0, or x_pad for the queue pass)
  int64_t rows;        // data rows of the pass
  int64_t rows_pad;    // padded rows of the pass (partials' row stride)
  bool rows_are_x;
  // Column tiles: first x's (x_tiles of them, columns [0, n)), then the queue's.
  int64_t x_tiles;
  int64_t queue_start;  // padded index of the queue's first row
  plan::PassPlan plan;
  plan::Parts parts;
  int64_t windows;     // ld / window
  bool with_o;         // accumulate a_i (the gradient of this pass's rows is asked for)
  acc_t c2;            // 2 t log2(e)
  acc_t* m2;           // [splits][slices][rows_pad]: shift (log2 units)
  acc_t* l;            // [splits][slices][rows_pad]: sum of the weights under it
  acc_t* lw;           // [splits][slices][rows_pad]: the same with x-x pairs at 1/2
  acc_t* a;            // [splits][rows_pad][ld]: sum of weights x rows (with_o)
};

// The row pass.  kOnline: the running max; else the static shift 0.
template <class Mma, int kBlockRows, bool kOnline>
__global__ void __launch_bounds__(RowGeometry<Mma, kBlockRows>::kThreads, 1)
    uniform_rows_kernel(PassParams<typename Mma::op_t, typename Mma::acc_t> p) {
  using G = RowGeometry<Mma, kBlockRows>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  constexpr int kCols = G::kCols, kPitch = G::kPitch;
  extern __shared__ __align__(128) unsigned char smem[];
  op_t* qbuf = reinterpret_cast<op_t*>(smem);
  op_t* kbuf = reinterpret_cast<op_t*>(smem + 2 * G::kQBytes);
  acc_t* sqbuf = reinterpret_cast<acc_t*>(smem + 2 * (G::kQBytes + G::kKBytes));

  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int g = layout::group_of(lane), t4 = layout::thread_in_group(lane);
  const bool resident = p.windows == 1;  // Q loaded once per item
  constexpr int kPassRows = G::kThreads / G::kRowChunks;  // rows one pass of the CTA's chunks covers
  static_assert(G::kThreads % G::kRowChunks == 0 && kCols % kPassRows == 0 && kBlockRows % kPassRows == 0,
                "whole rows per pass");
  const int my_row = tid / G::kRowChunks, my_chunk = tid % G::kRowChunks;
  const int my_smem = my_row * kPitch + my_chunk * G::kChunk;
  const int64_t pass_stride = kPassRows * p.ld;
  const int64_t thread_offset = my_row * p.ld + my_chunk * G::kChunk;

  for (int64_t item = blockIdx.x; item < p.plan.items(); item += gridDim.x) {
    const plan::WorkItem w = plan::work_item(p.plan, item);
    const int64_t row0 = p.row_start + w.row_block * kBlockRows;
    const int64_t warp_row0 = row0 + warp * RowSlice::kRows;
    const op_t* const block_rows = p.z + row0 * p.ld + thread_offset;
    // Tiles relative to the item's first one, in 32 bits (the launcher checks the count).
    const int tiles = int(w.end_tile - w.first_tile);
    const int stages = tiles * int(p.windows);
    const int x_tiles = int(std::min<int64_t>(std::max<int64_t>(p.x_tiles - w.first_tile, 0), tiles));
    const int windows = int(p.windows);
    // A tile's first column within its region (x's columns or the queue's), in 32 bits
    // (the launcher checks that the rows fit), and in the padded rows.
    auto region_col0 = [&](int tile) {
      return (int(w.first_tile) + tile - (tile < x_tiles ? 0 : int(p.x_tiles))) * kCols;
    };
    auto tile_col0 = [&](int tile) {
      return (tile < x_tiles ? 0 : p.queue_start) + int64_t(region_col0(tile));
    };
    // Stage s: column tile first_tile + s / windows, its window number s % windows.
    // Stage loads: this thread's 16-byte chunks are column my_chunk of rows my_row,
    // my_row + kPassRows, ... (static trip counts: no loop inside the main loop).
    auto copy_rows = [&](op_t* dst, const op_t* src, auto rows) {
#pragma unroll
      for (int i = 0; i < decltype(rows)::value / kPassRows; ++i) {
        copy_async_16(dst + i * kPassRows * kPitch, src + i * pass_stride);
      }
    };
    // `tile_rows`: this thread's first chunk of the tile's rows (window 0), and their terms.
    auto issue = [&](const op_t* tile_rows, const acc_t* tile_terms, bool first, int step, int win, int buffer) {
      copy_rows(kbuf + buffer * (G::kKBytes / sizeof(op_t)) + my_smem, tile_rows + win * G::kWindow,
                std::integral_constant<int, kCols>{});
      constexpr int kTermChunks = kCols * int(sizeof(acc_t)) / 16;
      if (step == windows - 1 && tid < kTermChunks) {
        copy_async_16(sqbuf + buffer * kCols + tid * (16 / sizeof(acc_t)), tile_terms + tid * (16 / sizeof(acc_t)));
      }
      if (!resident || first) {
        copy_rows(qbuf + (resident ? 0 : buffer) * (G::kQBytes / sizeof(op_t)) + my_smem,
                  block_rows + win * G::kWindow, std::integral_constant<int, kBlockRows>{});
      }
      copy_async_commit();
    };

    // The lane's two rows (slots 0 and 1) and their state.
    acc_t row_term[2], m[2];
    for (int slot = 0; slot < 2; ++slot) {
      row_term[slot] = p.term[warp_row0 + g + 8 * slot];
      m[slot] = kOnline ? negative_infinity<acc_t>() : acc_t(0);
    }
    acc_t s[Mma::kS], o[Mma::kO], l[Mma::kL];
#pragma unroll
    for (int e = 0; e < Mma::kO; ++e) o[e] = 0;
#pragma unroll
    for (int e = 0; e < Mma::kL; ++e) l[e] = 0;

    __syncthreads();  // the previous item's warps are done with every buffer
    // The next stage's tile as pointers, advanced by a tile (or to the queue's first).
    const op_t* next_rows = p.z + tile_col0(0) * p.ld + thread_offset;
    const acc_t* next_terms = p.term + tile_col0(0);
    const op_t* const queue_rows = p.z + p.queue_start * p.ld + thread_offset;
    const int64_t tile_stride = int64_t(kCols) * p.ld;
    if (stages > 0) issue(next_rows, next_terms, true, 0, int(plan::window_at(w.slice, 0, windows)), 0);
    int tile = 0, step = 0;
    // The stage after this one: its tile, step and feature window (plan::window_at,
    // advanced without a division).
    int next_tile = 0, next_step = 0;
    auto advance = [&] {
      if (++next_step < windows) return;
      next_step = 0;
      ++next_tile;
      const bool to_queue = next_tile == x_tiles;
      next_rows = to_queue ? queue_rows : next_rows + tile_stride;
      next_terms = to_queue ? p.term + p.queue_start : next_terms + kCols;
    };
    advance();
    int next_win = int(plan::window_at(w.slice, next_step, windows));
    // This part's column blocks against the warp's rows, per region, for the whole item.
    const bool rows_valid = warp_row0 - p.row_start < p.rows;
    const int warp_x_row = int(warp_row0 - p.row_start);  // the warp's first row within its pass
    const int64_t part_row = (warp_row0 - p.row_start) / plan::kPartRows;
    const plan::BlockRange held_x = plan::held_blocks(p.parts, p.rows_are_x, true, part_row, p.parts.x_blocks);
    const plan::BlockRange held_queue = p.rows_are_x ? plan::held_blocks(p.parts, true, false, part_row, p.parts.queue_blocks)
                                                     : plan::BlockRange{};
    bool active = false, diagonal = false, x_cols = false;
    int diagonal_key[2] = {0, 0};
    for (int st = 0; st < stages; ++st) {
      const int buffer = int(st & 1);
      copy_async_wait_all();
      __syncthreads();
      if (st + 1 < stages) {
        issue(next_rows, next_terms, false, next_step, next_win, buffer ^ 1);
        advance();
        if (++next_win == windows) next_win = 0;
      }
      if (step == 0) {
        const int col0 = region_col0(tile);
        x_cols = tile < x_tiles;
        // Pairs past the data have norm term -inf (pack_rows_kernel): only the self pairs
        // of a diagonal tile need a mask.  Element e is the self pair when its column
        // offset minus its row offset is warp_row0 - col0, i.e. (elem_col - 2t) ==
        // diagonal_key[slot] with the lane's parts moved to the key.
        const int offset = warp_x_row - col0;  // x pass: the warp's first row less the tile's first column
        diagonal = p.rows_are_x && x_cols && offset > -kCols && offset < RowSlice::kRows;
        for (int slot = 0; slot < 2; ++slot) {
          diagonal_key[slot] = offset + Mma::elem_row(lane, slot == 0 ? 0 : Mma::kS - 1) - 2 * t4;
        }
        const int u = col0 / int(plan::kPartRows);
        active = rows_valid && (x_cols ? held_x.holds(u) : held_queue.holds(u));
#pragma unroll
        for (int e = 0; e < Mma::kS; ++e) s[e] = 0;
      }
      const op_t* kb = kbuf + buffer * (G::kKBytes / sizeof(op_t));
      if (active) {
        const op_t* qb = qbuf + (resident ? 0 : buffer) * (G::kQBytes / sizeof(op_t));
        Mma::gram(s, qb + warp * RowSlice::kRows * kPitch, kb, kPitch, lane);
      }
      if (active && step == p.windows - 1) {
        const acc_t* terms = sqbuf + buffer * kCols;
#pragma unroll
        for (int e = 0; e < Mma::kS; ++e) s[e] = plan::partial_exponent2(p.c2, s[e], terms[Mma::elem_col(lane, e)]);
        if (diagonal) {
#pragma unroll
          for (int e = 0; e < Mma::kS; ++e) {
            if (Mma::elem_col(lane, e) - 2 * t4 == diagonal_key[Mma::elem_slot(e)]) s[e] = negative_infinity<acc_t>();
          }
        }
        acc_t bias[2] = {row_term[0], row_term[1]};  // the static shift 0
        if constexpr (kOnline) {
          acc_t tile_max[2] = {negative_infinity<acc_t>(), negative_infinity<acc_t>()};
#pragma unroll
          for (int e = 0; e < Mma::kS; ++e) tile_max[Mma::elem_slot(e)] = fmax(tile_max[Mma::elem_slot(e)], s[e]);
          acc_t scale[2];
#pragma unroll
          for (int slot = 0; slot < 2; ++slot) {
            tile_max[slot] = fmax(tile_max[slot], __shfl_xor_sync(0xffffffffu, tile_max[slot], 1));
            tile_max[slot] = fmax(tile_max[slot], __shfl_xor_sync(0xffffffffu, tile_max[slot], 2));
            const plan::OnlineStep<acc_t> next = plan::online_step(m[slot], tile_max[slot] + row_term[slot]);
            m[slot] = next.max;
            bias[slot] = plan::weight_bias(row_term[slot], next.shift);
            scale[slot] = next.scale;
          }
#pragma unroll
          for (int e = 0; e < Mma::kO; ++e) o[e] *= scale[Mma::out_slot(e)];
#pragma unroll
          for (int e = 0; e < Mma::kL; ++e) l[e] *= scale[(e >> 1) & 1];
        }
#pragma unroll
        for (int e = 0; e < Mma::kS; ++e) s[e] = exp2(s[e] + bias[Mma::elem_slot(e)]);
        // x-x pairs are seen from both of their rows: half a pair each in lse.
        const acc_t half = p.rows_are_x && x_cols ? acc_t(0.5) : acc_t(1);
        Mma::product(o, l, s, kb, kPitch, lane, half, p.with_o);
      }
      if (++step == windows) step = 0, ++tile;
    }

    // The item's partials: the shift and sums of each row (lanes t == 0 hold columns 0
    // and 1 of the row-sum product), and this slice of a_i.
    const int64_t base = (w.split * p.plan.slices + w.slice) * p.rows_pad;
    for (int slot = 0; slot < 2; ++slot) {
      const int64_t r = warp_row0 + g + 8 * slot - p.row_start;
      if (t4 == 0 && r < p.rows) {
        p.m2[base + r] = m[slot];
        p.l[base + r] = l[2 * slot];
        p.lw[base + r] = l[2 * slot + 1];
      }
    }
    if (p.with_o) {
      acc_t* a = p.a + w.split * p.rows_pad * p.ld + w.slice * G::kWindow;
#pragma unroll
      for (int e = 0; e < Mma::kO; ++e) {
        const int64_t r = warp_row0 + Mma::out_row(lane, e) - p.row_start;
        if (r < p.rows) a[r * p.ld + Mma::out_col(lane, e)] = o[e];
      }
    }
  }
}

// ---------------------------------------------------------------- row kernels

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Padded row p holds data row src(p): x's rows at [0, n), the queue's at
// [x_pad, x_pad + k), zeros elsewhere and in columns [d, ld).  term[p] = -c1 ||row||^2
// (c1 = t log2(e)) of the values as stored (Mma::round_operand), so the distances are
// those of the operands; -inf for a padding row, so that its pairs weigh 0 without a mask.
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
      const acc_t a = to_acc(v);
      s += a * a;
    }
    s = warp_sum(s);
    if (lane == 0) term[r] = src >= 0 ? -c1 * s : negative_infinity<acc_t>();
  }
}

// One CTA: lse = log sum over x's rows of lw_i exp(m_i), from every split's partials
// (slice 0) in a fixed order, in double, written as a double (ops.h).  stats[0] = lse in
// log2 units for the gradient.
template <class acc_t>
__global__ void __launch_bounds__(kLseThreads)
    lse_kernel(const acc_t* m2, const acc_t* lw, int64_t splits, int64_t slices, int64_t rows, int64_t rows_pad,
               double* lse, double* stats) {
  __shared__ double scratch[kLseThreads];
  const int tid = threadIdx.x;
  const int64_t count = splits * rows;
  auto at = [&](int64_t i) { return (i / rows) * slices * rows_pad + i % rows; };
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t i = tid; i < count; i += kLseThreads) top = fmax(top, double(m2[at(i)]));
  scratch[tid] = top;
  __syncthreads();
  for (int s = kLseThreads / 2; s > 0; s /= 2) {
    if (tid < s) scratch[tid] = fmax(scratch[tid], scratch[tid + s]);
    __syncthreads();
  }
  top = scratch[0];
  __syncthreads();
  double total = 0;
  for (int64_t i = tid; i < count; i += kLseThreads) total += double(lw[at(i)]) * plan::rescale2(double(m2[at(i)]), top);
  scratch[tid] = total;
  __syncthreads();
  for (int s = kLseThreads / 2; s > 0; s /= 2) {
    if (tid < s) scratch[tid] += scratch[tid + s];
    __syncthreads();
  }
  if (tid == 0) {
    const double lse2 = scratch[0] > 0 ? top + std::log2(scratch[0]) : -std::numeric_limits<double>::infinity();
    stats[0] = lse2;
    lse[0] = lse2 * plan::kLn2;  // a double: the loss lse - log |P| keeps its digits only if lse does
  }
}

// One warp per row of a pass: per feature slice, the splits' partials merged in split
// order under their largest shift, then grad = coefficient (l z - a).
template <class op_t, class acc_t>
__global__ void gradient_kernel(PassParams<op_t, acc_t> p, int64_t d, int window, int64_t grad_row0, double t,
                                const double* stats, acc_t* grad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t splits = p.plan.splits, slices = p.plan.slices;
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < p.rows; r += warps) {
    const op_t* z = p.z + (p.row_start + r) * p.ld;
    for (int64_t slice = 0; slice < slices; ++slice) {
      acc_t top = negative_infinity<acc_t>();
      for (int64_t s = 0; s < splits; ++s) top = fmax(top, p.m2[(s * slices + slice) * p.rows_pad + r]);
      acc_t l = 0;
      for (int64_t s = 0; s < splits; ++s) {
        const int64_t at = (s * slices + slice) * p.rows_pad + r;
        l += p.l[at] * plan::rescale2(p.m2[at], top);
      }
      const acc_t coefficient = static_cast<acc_t>(plan::gradient_coefficient(t, double(top), stats[0]));
      const int64_t c_end = std::min<int64_t>(d, (slice + 1) * window);
      for (int64_t c = slice * window + lane; c < c_end; c += 32) {
        acc_t a = 0;
        for (int64_t s = 0; s < splits; ++s) {
          a += p.a[(s * p.rows_pad + r) * p.ld + c] * plan::rescale2(p.m2[(s * slices + slice) * p.rows_pad + r], top);
        }
        grad[(grad_row0 + r) * d + c] = coefficient * (l * to_acc(z[c]) - a);
      }
    }
  }
}

// ---------------------------------------------------------------- host side

int grid_for(int64_t items, int64_t per_cta) {
  const int64_t ctas = (items + per_cta - 1) / per_cta;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ctas, int64_t(1) << 20)));
}

// Where each buffer sits in the workspace, a pure function of the problem.
struct PassBuffers {
  size_t m2 = 0, l = 0, lw = 0, a = 0;
};
struct Workspace {
  size_t z = 0, term = 0, stats = 0, bytes = 0;
  PassBuffers x, queue;
  int64_t x_pad = 0, queue_pad = 0, ld = 0, windows = 0;
  plan::PassPlan x_plan, queue_plan;
};

template <class Mma, int kBlockRows>
Workspace plan_workspace(const UniformProblem& problem) {
  using G = RowGeometry<Mma, kBlockRows>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  Workspace w;
  w.x_pad = plan::round_up(problem.n, G::kRowAlign);
  w.queue_pad = plan::round_up(problem.k, G::kRowAlign);
  w.ld = plan::round_up(problem.d, G::kWindow);
  w.windows = w.ld / G::kWindow;
  const int64_t x_tiles = problem.intra_batch ? w.x_pad / G::kCols : 0;
  const int64_t queue_tiles = w.queue_pad / G::kCols;
  w.x_plan = plan::make_pass_plan(w.x_pad / kBlockRows, x_tiles + queue_tiles, problem.grad_x ? w.windows : 1);
  w.queue_plan = plan::make_pass_plan(w.queue_pad / kBlockRows, w.x_pad / G::kCols, w.windows);
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at = (at + bytes + 255) / 256 * 256;
    return here;
  };
  w.z = take(size_t(w.x_pad + w.queue_pad) * size_t(w.ld) * sizeof(op_t));
  w.term = take(size_t(w.x_pad + w.queue_pad) * sizeof(acc_t));
  w.stats = take(2 * sizeof(double));
  auto pass = [&](const plan::PassPlan& pp, int64_t rows_pad, bool with_o) {
    PassBuffers b;
    const size_t row_values = size_t(pp.splits * pp.slices * rows_pad) * sizeof(acc_t);
    b.m2 = take(row_values);
    b.l = take(row_values);
    b.lw = take(row_values);
    if (with_o) b.a = take(size_t(pp.splits * rows_pad) * size_t(w.ld) * sizeof(acc_t));
    return b;
  };
  w.x = pass(w.x_plan, w.x_pad, problem.grad_x);
  if (problem.grad_queue) w.queue = pass(w.queue_plan, w.queue_pad, true);
  w.bytes = at;
  return w;
}

template <class Mma, int kBlockRows>
cudaError_t run_pass(const PassParams<typename Mma::op_t, typename Mma::acc_t>& p, bool online,
                     int64_t max_ctas, cudaStream_t stream) {
  using G = RowGeometry<Mma, kBlockRows>;
  const auto kernel = online ? uniform_rows_kernel<Mma, kBlockRows, true> : uniform_rows_kernel<Mma, kBlockRows, false>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(G::kSmemBytes));
  if (err != cudaSuccess) return err;
  int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(p.plan.items(), int64_t(1) << 30));
  if (max_ctas > 0) ctas = std::min(ctas, max_ctas);
  kernel<<<static_cast<unsigned>(ctas), G::kThreads, G::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
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
  for (const plan::PassPlan* pp : {&w.x_plan, &w.queue_plan}) {
    if (pp->tiles_per_split * w.windows >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
  }
  unsigned char* base = static_cast<unsigned char*>(workspace);
  op_t* z = reinterpret_cast<op_t*>(base + w.z);
  acc_t* term = reinterpret_cast<acc_t*>(base + w.term);
  // c1 is positive (t > 0 is checked; a t so small that c1 rounds to 0 weighs every pair 1,
  // as exp(-t d^2) does then), so padding terms are -inf, never NaN.
  const acc_t c1 = static_cast<acc_t>(problem.t * plan::kLog2E);
  double* stats = reinterpret_cast<double*>(base + w.stats);
  const int64_t padded_rows = w.x_pad + w.queue_pad;
  pack_rows_kernel<Mma><<<grid_for(padded_rows, kSmallThreads / 32), kSmallThreads, 0, stream>>>(
      static_cast<const op_t*>(problem.rows), problem.n, problem.k, problem.d, w.x_pad, padded_rows, w.ld, c1, z, term);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  PassParams<op_t, acc_t> x;
  x.z = z;
  x.term = term;
  x.ld = w.ld;
  x.row_start = 0;
  x.rows = problem.n;
  x.rows_pad = w.x_pad;
  x.rows_are_x = true;
  x.x_tiles = problem.intra_batch ? w.x_pad / G::kCols : 0;
  x.queue_start = w.x_pad;
  x.plan = w.x_plan;
  x.parts = plan::make_parts(problem.n, problem.k, problem.intra_batch, problem.part, problem.num_parts);
  x.windows = w.windows;
  x.with_o = problem.grad_x;
  x.c2 = static_cast<acc_t>(2 * problem.t * plan::kLog2E);
  auto bind = [&](PassParams<op_t, acc_t>& p, const PassBuffers& b) {
    p.m2 = reinterpret_cast<acc_t*>(base + b.m2);
    p.l = reinterpret_cast<acc_t*>(base + b.l);
    p.lw = reinterpret_cast<acc_t*>(base + b.lw);
    p.a = p.with_o ? reinterpret_cast<acc_t*>(base + b.a) : nullptr;
  };
  bind(x, w.x);
  if ((err = run_pass<Mma, kBlockRows>(x, !problem.static_shift, problem.max_ctas, stream)) != cudaSuccess) return err;
  lse_kernel<acc_t><<<1, kLseThreads, 0, stream>>>(x.m2, x.lw, x.plan.splits, x.plan.slices, x.rows, x.rows_pad,
                                                   static_cast<double*>(lse_out), stats);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  acc_t* grad = static_cast<acc_t*>(grad_out);
  if (problem.grad_x) {
    gradient_kernel<op_t, acc_t><<<grid_for(problem.n, kSmallThreads / 32), kSmallThreads, 0, stream>>>(
        x, problem.d, G::kWindow, 0, problem.t, stats, grad);
  }
  if (problem.grad_queue) {
    // The queue's rows against x's columns; the same part selection, seen from the queue.
    PassParams<op_t, acc_t> q = x;
    q.row_start = w.x_pad;
    q.rows = problem.k;
    q.rows_pad = w.queue_pad;
    q.rows_are_x = false;
    q.x_tiles = w.x_pad / G::kCols;
    q.plan = w.queue_plan;
    q.with_o = true;
    bind(q, w.queue);
    if ((err = run_pass<Mma, kBlockRows>(q, !problem.static_shift, problem.max_ctas, stream)) != cudaSuccess) return err;
    gradient_kernel<op_t, acc_t><<<grid_for(problem.k, kSmallThreads / 32), kSmallThreads, 0, stream>>>(
        q, problem.d, G::kWindow, problem.n, problem.t, stats, grad);
  }
  return cudaGetLastError();
}

// The kernel of a precision and block size (0: the default, 128 rows; 64 for float64).
template <class F>
auto with_kernel(UniformPrecision precision, int64_t block_rows, F&& f) {
  const bool small = block_rows == 64;
  switch (precision) {
    case UniformPrecision::kBf16:
      return small ? f(MmaBf16{}, std::integral_constant<int, 64>{}) : f(MmaBf16{}, std::integral_constant<int, 128>{});
    case UniformPrecision::kFp16:
      return small ? f(MmaFp16{}, std::integral_constant<int, 64>{}) : f(MmaFp16{}, std::integral_constant<int, 128>{});
    case UniformPrecision::kTf32:
      return small ? f(MmaTf32<false>{}, std::integral_constant<int, 64>{})
                   : f(MmaTf32<false>{}, std::integral_constant<int, 128>{});
    case UniformPrecision::kFp64:
      return f(MmaF64{}, std::integral_constant<int, 64>{});
    case UniformPrecision::kFp32:
    default:
      return small ? f(MmaTf32<true>{}, std::integral_constant<int, 64>{})
                   : f(MmaTf32<true>{}, std::integral_constant<int, 128>{});
  }
}

bool has_kernel(UniformPrecision precision, int64_t block_rows) {
  return block_rows == 0 || block_rows == 64 || block_rows == uniform_block_rows(precision);
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
  if (problem.n < 1 || problem.k < 0 || problem.d < 1 || problem.num_parts < 1 || problem.part < 0 ||
      problem.part >= problem.num_parts || problem.max_ctas < 0 || !has_kernel(problem.precision, problem.block_rows) ||
      (problem.grad_queue && problem.k == 0) || ((problem.grad_x || problem.grad_queue) && grad_rows == nullptr) ||
      lse == nullptr || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  return with_kernel(problem.precision, problem.block_rows, [&](auto mma, auto rows) {
    return launch_with<decltype(mma), decltype(rows)::value>(problem, workspace, lse, grad_rows, stream);
  });
}

}  // namespace cuda
}  // namespace pyhypersphere
