// CUDA uniformity kernels: tiled Gram products on tensor cores fused with the exp, a
// shifted (log-sum-exp) reduction and, when asked, the gradient in the same pass.
// The math and the contract are the CPU kernel's (csrc/cpu/uniform_cpu.cpp,
// csrc/uniform_math.h); the host entry points are declared in uniform_kernels.h.
//
// Launch sequence (one stream, no host synchronization):
//   1. pack:    rows -> padded copy [blocks * B, ld] (zero rows and columns past the
//               data, so tile loads need no masks) and squared norms of what was stored
//   2. tiles:   persistent CTAs claim tiles in schedule order from a counter; per tile
//               {a, b}:  S = Z_a Z_b^T;  E = -t ||z_i - z_j||^2 (masked);  W = exp(E - max E);
//               row sums (and column sums); then, in the blocks' turn (tickets, below),
//               raise the block shifts, add the sums and, for the gradient,
//               acc_a += alpha_a W Z_b and acc_b += alpha_b W^T Z_a, d in chunks.
//               Without the gradient the tile's total goes to a chain of tiles instead
//               (tile f to chain (f - begin) mod total_chains): no block state, no wait
//               on the tile's blocks
//   3. finish:  one CTA: global shift, total (double, fixed order), lse
//   4. gradient: grad_i = scale_B (s_i z_i - acc_i)      (uniform_math.h: gradient_scale)
//
// Why tickets (and not atomics or one launch per round): both blocks of a tile need
// the tile's contribution, and a block's sums live under its own running shift, which
// a later tile may raise (rescaling everything the block holds).  Updates of one block
// must therefore be serialized, and for reproducibility they must come in a fixed
// order.  Each block's ticket records the last tile that updated it; a tile waits,
// before its update, for the tile that precedes it on each of its blocks in the
// schedule (TileOrder::previous_visit), so every block sees its tiles in schedule order
// - the CPU kernel's order - whatever the timing.  The Gram product and the exps
// (the part that does not touch the accumulators) overlap with the wait.  Tiles are
// claimed in increasing order, and a tile only waits for smaller ones, which were
// claimed by running CTAs: no deadlock, whatever the grid size or residency.
// Within a round of the schedule no block occurs twice, so a window of claimed tiles
// about one round wide runs without waiting.  (Side groups and the no-gradient chains
// are further states with tickets of their own, under the same rule.)  One launch per
// round would need ~N/B launches with a tail each; atomics would need a fixed shift
// known in advance.
#include "tile_elements.h"
#include "tile_mma.cuh"
#include "tile_order.h"
#include "tile_states.h"
#include "uniform_kernels.h"

#include "../tile_schedule.h"  // blocks_for
#include "../uniform_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

namespace pyhypersphere {
namespace cuda {
namespace {

constexpr int kTileThreads = 256;  // 8 warps, as a 4 x 2 grid over each tile product
constexpr int kWarpRows = 4;
constexpr int kWarpCols = 2;
constexpr int kFinishThreads = 512;
constexpr int kRowWarps = 8;  // warps per CTA of the row-parallel kernels

constexpr size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

template <class T>
__device__ __forceinline__ T negative_infinity() {
  return -std::numeric_limits<T>::infinity();
}

// kCols elements moved as one vector (16 bytes for float, 8 for 16-bit types).
template <class T>
struct alignas(4 * sizeof(T)) Quad {
  T v[4];
};

// Shared-memory plan and warp tiling of one tile, per precision.
template <class Mma>
struct TileGeometry {
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  static constexpr int B = Mma::kBlock;
  static constexpr int BK = Mma::kChunkK;
  static constexpr int DC = Mma::kChunkD;
  // Rows padded by 16 bytes (32 for double): leading dimensions stay multiples of 16
  // bytes and of 4 elements (WMMA's requirements), fragments stay 32-byte aligned, and
  // the padding staggers the banks.
  static constexpr int kOpPad = 16 / int(sizeof(op_t)) > 4 ? 16 / int(sizeof(op_t)) : 4;
  static constexpr int kAccPad = 16 / int(sizeof(acc_t)) > 4 ? 16 / int(sizeof(acc_t)) : 4;
  static constexpr int LDK = BK + kOpPad;   // Gram operand stage
  static constexpr int LDC = DC + kOpPad;   // gradient operand chunk
  static constexpr int LDW = B + kOpPad;    // weights in op_t (16-bit only)
  static constexpr int LDS = B + kAccPad;   // S / E / W tile in acc_t
  static constexpr int LDO = DC + kAccPad;  // product staging for the update
  // 16-bit operands need the weights converted to op_t; otherwise W is used in place.
  static constexpr bool kSeparateW = !std::is_same<op_t, acc_t>::value;

  static constexpr int WM = B / kWarpRows;  // rows of a warp's share (all products)
  static constexpr int WN = B / kWarpCols;  // columns of a warp's share of S
  static constexpr int PWN = DC / kWarpCols;  // columns of a warp's share of a product chunk
  static constexpr int GM = WM / Mma::kM, GN = WN / Mma::kN;
  static constexpr int PM = WM / Mma::kM, PN = PWN / Mma::kN;
  static_assert(WM % Mma::kM == 0 && WN % Mma::kN == 0 && PWN % Mma::kN == 0, "warp tiling");
  static_assert(BK % Mma::kK == 0 && B % Mma::kK == 0, "k steps");

  // Region G: the Gram operands (2 stages x {Z_a, Z_b}); later the gradient chunks
  // {Z_b, Z_a} followed by the op_t weights (16-bit) or the product staging.
  static constexpr size_t kStage = size_t(B) * LDK * sizeof(op_t);
  static constexpr size_t kChunk = size_t(B) * LDC * sizeof(op_t);
  static constexpr size_t kWeights16 = size_t(B) * LDW * sizeof(op_t);
  static constexpr size_t kStaging = size_t(B) * LDO * sizeof(acc_t);
  static constexpr size_t kGramBytes = 4 * kStage;
  static constexpr size_t kGradBytes = 2 * kChunk + (kSeparateW ? kWeights16 : kStaging);
  static constexpr size_t kRegionG =
      round_up(kGramBytes > kGradBytes ? kGramBytes : kGradBytes, 128);
  // Region S: the Gram tile, then exponents, then (in place) the weights; with 16-bit
  // operands it is free once the weights are converted and holds the product staging.
  static constexpr size_t kRegionS = round_up(size_t(B) * LDS * sizeof(acc_t), 128);
  static_assert(!kSeparateW || kStaging <= kRegionS, "staging must fit in S");
  // Per-row vectors: sq_a, sq_b, row sums, column sums; then the reduction scratch.
  static constexpr size_t kVectors = round_up(4 * size_t(B) * sizeof(acc_t), 128);
  static constexpr size_t kScratch = round_up(kTileThreads / 32 * sizeof(acc_t), 128);
  static constexpr size_t kSmemBytes = kRegionG + kRegionS + kVectors + kScratch;

  // The element passes' column partials (TileElements) use the Gram stages' first
  // 2 * kChunk bytes, which hold nothing between the Gram product and the gradient chunks.
  static constexpr size_t kColumnPartials =
      size_t(TileElements<B, kTileThreads>::kRowsPerPass) * B * sizeof(acc_t);
  static_assert(kColumnPartials <= 2 * kChunk, "column partials must fit before W / staging");
  static_assert(TileElements<B, kTileThreads>::kCols == 4, "Quad and the row sums take 4 columns");

  // Feature columns are padded to a multiple of both chunk widths.
  static constexpr int kPadD = BK > DC ? BK : DC;
  static_assert(kPadD % BK == 0 && kPadD % DC == 0, "chunk widths must divide each other");
};

template <class acc_t, class op_t>
struct TileParams {
  const op_t* z;        // [blocks * B, ld] padded rows
  const acc_t* sq;      // [blocks * B]
  int64_t ld;           // padded feature count
  int64_t n, k;         // data rows of x and of the queue
  int64_t x_blocks, queue_blocks;
  bool intra_batch, grad;
  acc_t t;
  int64_t begin, end;   // this part's slice of the tile numbering
  // State slots (tile_states.h says which a tile updates): shift, block_sum and tickets
  // (and row_sum, acc: B rows per slot) are indexed by slot; the operand rows z and sq
  // by block.
  acc_t* shift;         // [slots] running shift
  acc_t* block_sum;     // [slots] no-gradient mode: sum under the slot's shift
  acc_t* row_sum;       // [slots * B] gradient mode: s_i under the shift
  acc_t* acc;           // [slots * B, ld] gradient mode: sum_j w_ij z_j under the shift
  unsigned long long* tickets;    // [slots]
  unsigned long long* next_tile;  // claim counter
  int64_t groups, slot_base;      // side groups (gradient mode; groups 0: off)
  int64_t total_chains;           // the chains of tile totals (no gradient)
  // Products first (nullptr: off): per CTA, 2 B x ld accumulators for W Z_b and W^T Z_a
  // computed before the turn (UniformProblem::products_first_ctas).
  acc_t* staged;

  __device__ StateLayout states() const { return StateLayout{grad, groups, slot_base, begin, total_chains}; }
};

// kStaged: products first (TileParams::staged), a kernel of its own so that the default
// kernel carries none of its registers.
template <class Mma, bool kStaged>
class TileWorker {
  using G = TileGeometry<Mma>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  using Acc = typename Mma::Acc;
  template <class Use, class Layout>
  using Frag = typename Mma::template Frag<Use, Layout>;
  static constexpr int B = G::B;
  using Elements = TileElements<B, kTileThreads>;
  static constexpr int kCols = Elements::kCols;
  using Exponents = acc_t[Elements::kRowsPerThread][kCols];

 public:
  __device__ TileWorker(const TileParams<acc_t, op_t>& p, unsigned char* smem)
      : p_(p),
        order_(p.x_blocks, p.queue_blocks, p.intra_batch),
        region_g_(smem),
        s_(reinterpret_cast<acc_t*>(smem + G::kRegionG)),
        vectors_(reinterpret_cast<acc_t*>(smem + G::kRegionG + G::kRegionS)),
        scratch_(reinterpret_cast<acc_t*>(smem + G::kRegionG + G::kRegionS + G::kVectors)) {
    sq_a_ = vectors_;
    sq_b_ = vectors_ + B;
    row_sums_ = vectors_ + 2 * B;
    col_sums_ = vectors_ + 3 * B;
    // Weights as the A operand of the gradient products, and the staging buffer.
    if constexpr (G::kSeparateW) {
      w_ = reinterpret_cast<op_t*>(region_g_ + 2 * G::kChunk);
      ldw_ = G::LDW;
      staging_ = s_;
    } else {
      w_ = reinterpret_cast<op_t*>(s_);
      ldw_ = G::LDS;
      staging_ = reinterpret_cast<acc_t*>(region_g_ + 2 * G::kChunk);
    }
  }

  __device__ void run(int64_t f) {
    const TilePair tile = order_.tile(f);
    const bool diagonal = tile.a == tile.b;
    const int64_t row_a = tile.a * B, row_b = tile.b * B;  // padded row offsets
    const int tid = threadIdx.x;
    if (tid < B) {
      sq_a_[tid] = p_.sq[row_a + tid];
      sq_b_[tid] = p_.sq[row_b + tid];
    }
    gram(row_a, row_b, diagonal);  // S = Z_a Z_b^T; ends with a barrier
    Exponents e;
    const acc_t tile_max = exponents(valid_rows(tile.a), valid_rows(tile.b), diagonal, e);
    const bool has_pairs = tile_max != negative_infinity<acc_t>();
    if (has_pairs) weights_and_sums(tile_max, /*columns=*/p_.grad && !diagonal, e);
    if constexpr (kStaged) {
      if (p_.grad && has_pairs) stage_products(row_a, row_b, diagonal);  // before the wait
    }

    // The states the tile updates (its blocks', their side groups', or without the
    // gradient its chain's) and the tiles that updated them last.
    const TileStates states = tile_states(order_, p_.states(), f, tile);

    // The states' turn: wait for the tiles before this one on a and on b.
    if (tid == 0) {
      wait_turn(states.a, f);
      if (states.two) wait_turn(states.b, f);
      __threadfence();
    }
    __syncthreads();
    if (has_pairs) {
      update_block_state(states.a.slot, states.b.slot, tile_max, diagonal);
      if constexpr (kStaged) {
        if (p_.grad) {
          const acc_t* rows = staged_rows();
          accumulate_staged(states.a.slot * B, rows, scratch_[0], scratch_[1]);
          if (!diagonal) accumulate_staged(states.b.slot * B, rows + int64_t(B) * p_.ld, scratch_[2], scratch_[3]);
        }
      } else {
        if (p_.grad) gradient_products(row_a, row_b, states.a.slot * B, states.b.slot * B, diagonal);
      }
    }
    // Publish: this tile's writes happen before any later tile of a or b reads them.  The
    // barrier orders every thread's writes before thread 0's fence, whose release is
    // cumulative (the pattern of cooperative_groups' grid sync): one fence, not 256.
    __syncthreads();
    if (tid == 0) {
      __threadfence();
      store_release(&p_.tickets[states.a.slot], static_cast<unsigned long long>(f) + 1);
      if (states.two) store_release(&p_.tickets[states.b.slot], static_cast<unsigned long long>(f) + 1);
    }
  }

 private:
  __device__ int valid_rows(int64_t block) const {
    const int64_t left = block < p_.x_blocks ? p_.n - block * B
                                             : p_.k - (block - p_.x_blocks) * B;
    return static_cast<int>(left < B ? left : B);
  }

  __device__ void wait_turn(const TileState& state, int64_t f) const {
    const int64_t previous = tile_to_wait_for(order_, p_.states(), state, f);
    if (previous >= 0) wait_ticket(&p_.tickets[state.slot], static_cast<unsigned long long>(previous) + 1);
  }

  // Copies rows [row, row + B) x columns [col, col + width) of the padded rows into
  // shared memory (leading dimension ld_dst), asynchronously.
  template <int kWidth>
  __device__ void load_rows(op_t* dst, int ld_dst, int64_t row, int64_t col) const {
    constexpr int kVec = 16 / int(sizeof(op_t));
    constexpr int kPerRow = kWidth / kVec;
    static_assert(kWidth % kVec == 0, "16-byte copies");
    const op_t* src = p_.z + row * p_.ld + col;
    for (int idx = threadIdx.x; idx < B * kPerRow; idx += kTileThreads) {
      const int r = idx / kPerRow, c = (idx % kPerRow) * kVec;
      copy_async_16(dst + r * ld_dst + c, src + static_cast<int64_t>(r) * p_.ld + c);
    }
  }

  // S = Z_a Z_b^T over all (padded) columns, two-stage cp.async pipeline.
  __device__ void gram(int64_t row_a, int64_t row_b, bool diagonal) {
    // Stage s holds Z_a's chunk at region_g_ + s * kStage and Z_b's 2 stages further.
    auto stage_a = [&](int s) { return reinterpret_cast<op_t*>(region_g_ + s * G::kStage); };
    auto stage_b = [&](int s) { return reinterpret_cast<op_t*>(region_g_ + (2 + s) * G::kStage); };
    const int warp = threadIdx.x / 32;
    const int wr = warp / kWarpCols, wc = warp % kWarpCols;
    Acc acc[G::GM][G::GN];
#pragma unroll
    for (int i = 0; i < G::GM; ++i)
#pragma unroll
      for (int j = 0; j < G::GN; ++j) wmma::fill_fragment(acc[i][j], acc_t(0));

    const int64_t chunks = p_.ld / G::BK;
    auto issue = [&](int64_t chunk, int stage) {
      load_rows<G::BK>(stage_a(stage), G::LDK, row_a, chunk * G::BK);
      if (!diagonal) load_rows<G::BK>(stage_b(stage), G::LDK, row_b, chunk * G::BK);
    };
    issue(0, 0);
    copy_async_commit();
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int stage = static_cast<int>(chunk & 1);
      if (chunk + 1 < chunks) issue(chunk + 1, stage ^ 1);
      copy_async_commit();  // possibly empty: keeps "all but the newest group" uniform
      copy_async_wait<1>();
      __syncthreads();
      const op_t* a = stage_a(stage);
      const op_t* b = diagonal ? a : stage_b(stage);  // on the diagonal Z_b == Z_a
#pragma unroll
      for (int kk = 0; kk < G::BK; kk += Mma::kK) {
        Operand<Frag<wmma::matrix_a, wmma::row_major>> fa[G::GM];
        Operand<Frag<wmma::matrix_b, wmma::col_major>> fb[G::GN];  // Z_b^T
#pragma unroll
        for (int i = 0; i < G::GM; ++i) {
          wmma::load_matrix_sync(fa[i].hi, a + (wr * G::WM + i * Mma::kM) * G::LDK + kk, G::LDK);
          Mma::prepare(fa[i]);
        }
#pragma unroll
        for (int j = 0; j < G::GN; ++j) {
          wmma::load_matrix_sync(fb[j].hi, b + (wc * G::WN + j * Mma::kN) * G::LDK + kk, G::LDK);
          Mma::prepare(fb[j]);
        }
#pragma unroll
        for (int i = 0; i < G::GM; ++i)
#pragma unroll
          for (int j = 0; j < G::GN; ++j) Mma::mma(acc[i][j], fa[i], fb[j]);
      }
      __syncthreads();  // the stage is refilled by the next iteration's issue
    }
#pragma unroll
    for (int i = 0; i < G::GM; ++i)
#pragma unroll
      for (int j = 0; j < G::GN; ++j) {
        wmma::store_matrix_sync(s_ + (wr * G::WM + i * Mma::kM) * G::LDS + wc * G::WN + j * Mma::kN,
                                acc[i][j], G::LDS, wmma::mem_row_major);
      }
    __syncthreads();
  }

  // Each thread's exponents -t ||z_i - z_j||^2 of its elements (TileElements), -inf
  // outside the tile's pairs (rows past the data, and i == j on a diagonal tile, whose
  // self pair must not set the shift), read from the Gram tile S.  Returns the tile's
  // largest exponent.  Most tiles are full and off the diagonal: they skip the masks.
  __device__ acc_t exponents(int rows_a, int rows_b, bool diagonal, Exponents& e) {
    const bool masked = diagonal || rows_a < B || rows_b < B;
    const acc_t local = masked ? thread_exponents<true>(rows_a, rows_b, diagonal, e)
                               : thread_exponents<false>(rows_a, rows_b, diagonal, e);
    return block_max(local);
  }

  template <bool kMasked>
  __device__ acc_t thread_exponents(int rows_a, int rows_b, bool diagonal, Exponents& e) const {
    const int tid = threadIdx.x;
    const int j0 = Elements::col0(tid);
    acc_t sq_b[kCols];
    load_quad(sq_b, sq_b_ + j0);
    acc_t local = negative_infinity<acc_t>();
#pragma unroll
    for (int k = 0; k < Elements::kRowsPerThread; ++k) {
      const int i = Elements::row(tid, k);
      const acc_t sq_i = sq_a_[i];
      acc_t gram[kCols];
      load_quad(gram, s_ + i * G::LDS + j0);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        acc_t ex = math::pair_exponent(p_.t, sq_i, sq_b[c], gram[c]);
        if constexpr (kMasked) {
          const bool pair = i < rows_a && j0 + c < rows_b && !(diagonal && i == j0 + c);
          ex = pair ? ex : negative_infinity<acc_t>();
        }
        e[k][c] = ex;
        local = fmax(local, ex);  // skips a NaN exponent: NaN must not become the shift
      }
    }
    return local;
  }

  // W = exp(E - tile_max) (0 outside the pairs), row sums and, when asked, column sums,
  // each in a fixed order.  With 16-bit operands W is rounded to op_t and the sums are
  // of the rounded weights, so sum_j w_ij (z_i - z_j) stays exactly translation-free.
  __device__ void weights_and_sums(acc_t tile_max, bool columns, const Exponents& e) {
    const int tid = threadIdx.x;
    const int j0 = Elements::col0(tid);
    acc_t col_part[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) col_part[c] = 0;
#pragma unroll
    for (int k = 0; k < Elements::kRowsPerThread; ++k) {
      const int i = Elements::row(tid, k);
      acc_t w[kCols];
      if constexpr (G::kSeparateW) {
        op_t rounded[kCols];
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          rounded[c] = from_acc<op_t>(std::exp(e[k][c] - tile_max));
          w[c] = to_acc(rounded[c]);
        }
        store_quad(w_ + i * G::LDW + j0, rounded);
      } else {
#pragma unroll
        for (int c = 0; c < kCols; ++c) {
          const acc_t v = std::exp(e[k][c] - tile_max);
          // With the gradient, the weights W Z multiplies, so that the row sums match them.
          w[c] = p_.grad ? Mma::round_operand(v) : v;
        }
        store_quad(s_ + i * G::LDS + j0, w);
      }
      acc_t row = (w[0] + w[1]) + (w[2] + w[3]);
#pragma unroll
      for (int offset = Elements::kLanesPerRow / 2; offset > 0; offset /= 2) {
        row += __shfl_xor_sync(0xffffffffu, row, offset);
      }
      if (Elements::row_leader(tid)) row_sums_[i] = row;
#pragma unroll
      for (int c = 0; c < kCols; ++c) col_part[c] += w[c];
    }
    if (columns) {
      // Each row group's column partials, then their sum in row-group order.  The Gram
      // operand stages are free until the gradient products load their chunks.
      acc_t* partials = reinterpret_cast<acc_t*>(region_g_);
      store_quad(partials + Elements::row_group(tid) * B + j0, col_part);
      __syncthreads();
      if (tid < B) {
        acc_t sum = 0;
#pragma unroll
        for (int g = 0; g < Elements::kRowsPerPass; ++g) sum += partials[g * B + tid];
        col_sums_[tid] = sum;
      }
    }
    __syncthreads();
    // Without the gradient a tile adds one total to its chain's slot: summed here, before
    // the turn, by warp 0 in a fixed order (read by thread 0 after the turn's barrier).
    const int warp = tid / 32, lane = tid % 32;
    if (!p_.grad && warp == 0) {
      acc_t total = 0;
      for (int i = lane; i < B; i += 32) total += row_sums_[i];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
      if (lane == 0) scratch_[kTileTotal] = total;
    }
  }

  // kCols consecutive elements from / to shared memory, as vectors (aligned: row
  // strides and column offsets are multiples of the vector width, TileGeometry).
  template <class T>
  static __device__ __forceinline__ void load_quad(T (&v)[kCols], const T* src) {
    const Quad<T> q = *reinterpret_cast<const Quad<T>*>(src);
#pragma unroll
    for (int c = 0; c < kCols; ++c) v[c] = q.v[c];
  }
  template <class T>
  static __device__ __forceinline__ void store_quad(T* dst, const T (&v)[kCols]) {
    Quad<T> q;
#pragma unroll
    for (int c = 0; c < kCols; ++c) q.v[c] = v[c];
    *reinterpret_cast<Quad<T>*>(dst) = q;
  }

  // In the blocks' turn: raise their shifts (rescaling what they hold) and add the
  // sums, as UniformCpuKernel::raise_block / visit_tile.  scratch_[0..3] receive the
  // factors (f_a, alpha_a, f_b, alpha_b) for the gradient products:
  //   held <- held * f + alpha * tile_contribution
  // with f = exp(M_old - M_new) when the shift rises (alpha = 1), else f = 1.
  __device__ void update_block_state(int64_t slot_a, int64_t slot_b, acc_t tile_max, bool diagonal) {
    if (threadIdx.x == 0) {
      acc_t f_a, alpha_a, f_b = 1, alpha_b = 0;
      raise_block(slot_a, tile_max, f_a, alpha_a);
      if (!p_.grad) {
        acc_t total = scratch_[kTileTotal];
        if (diagonal) total *= acc_t(0.5);  // a diagonal tile holds each pair twice
        p_.block_sum[slot_a] = __ldcg(&p_.block_sum[slot_a]) * f_a + alpha_a * total;
      } else if (!diagonal) {
        raise_block(slot_b, tile_max, f_b, alpha_b);
      }
      scratch_[0] = f_a;
      scratch_[1] = alpha_a;
      scratch_[2] = f_b;
      scratch_[3] = alpha_b;
    }
    __syncthreads();
    if (p_.grad && threadIdx.x < B) {
      const int r = threadIdx.x;
      acc_t* sum_a = &p_.row_sum[slot_a * B + r];
      *sum_a = __ldcg(sum_a) * scratch_[0] + scratch_[1] * row_sums_[r];
      if (!diagonal) {
        acc_t* sum_b = &p_.row_sum[slot_b * B + r];
        *sum_b = __ldcg(sum_b) * scratch_[2] + scratch_[3] * col_sums_[r];
      }
    }
  }

  __device__ void raise_block(int64_t slot, acc_t tile_max, acc_t& f, acc_t& alpha) const {
    const acc_t held = __ldcg(&p_.shift[slot]);
    if (tile_max > held) {
      f = math::rescale_factor(held, tile_max);
      p_.shift[slot] = tile_max;
      alpha = 1;
    } else {
      f = 1;
      alpha = std::exp(tile_max - held);
    }
  }

  // acc_a += alpha_a W Z_b and (off the diagonal) acc_b += alpha_b W^T Z_a, each
  // after scaling by its f, in chunks of DC feature columns, in the turn.  Operands from
  // the padded rows row_a / row_b; accumulators at the slots' rows acc_row_a / acc_row_b.
  __device__ void gradient_products(int64_t row_a, int64_t row_b, int64_t acc_row_a, int64_t acc_row_b,
                                    bool diagonal) {
    const int warp = threadIdx.x / 32;
    const int wr = warp / kWarpCols, wc = warp % kWarpCols;
    const acc_t f_a = scratch_[0], alpha_a = scratch_[1];
    const acc_t f_b = scratch_[2], alpha_b = scratch_[3];
    for (int64_t col = 0; col < p_.ld; col += G::DC) {
      load_chunks(row_a, row_b, col, diagonal);
      Acc prod[G::PM][G::PN];
      chunk_product</*kTransposed=*/false>(prod);
      store_products(prod, wr, wc);
      __syncthreads();
      accumulate(acc_row_a, col, f_a, alpha_a);
      __syncthreads();
      if (!diagonal) {
        chunk_product</*kTransposed=*/true>(prod);
        store_products(prod, wr, wc);
        __syncthreads();
        accumulate(acc_row_b, col, f_b, alpha_b);
        __syncthreads();
      }
    }
  }

  // Products first (p_.staged): the same products before the turn, into this CTA's
  // staging rows in global memory (W Z_b, then W^T Z_a, B x ld each), so that the turn
  // holds only the read-modify-write (accumulate_staged).  Ends with a barrier.
  __device__ void stage_products(int64_t row_a, int64_t row_b, bool diagonal) {
    const int warp = threadIdx.x / 32;
    const int wr = warp / kWarpCols, wc = warp % kWarpCols;
    acc_t* const staged = staged_rows();
    for (int64_t col = 0; col < p_.ld; col += G::DC) {
      load_chunks(row_a, row_b, col, diagonal);
      Acc prod[G::PM][G::PN];
      chunk_product</*kTransposed=*/false>(prod);
      store_staged(prod, staged, col, wr, wc);
      if (!diagonal) {
        chunk_product</*kTransposed=*/true>(prod);
        store_staged(prod, staged + static_cast<int64_t>(B) * p_.ld, col, wr, wc);
      }
      __syncthreads();  // the chunk buffers are refilled by the next chunk; the rows are read in the turn
    }
  }

  __device__ acc_t* staged_rows() const {
    return p_.staged + static_cast<int64_t>(blockIdx.x) * 2 * B * p_.ld;
  }

  __device__ void store_staged(Acc (&prod)[G::PM][G::PN], acc_t* rows, int64_t col, int wr, int wc) const {
#pragma unroll
    for (int i = 0; i < G::PM; ++i)
#pragma unroll
      for (int j = 0; j < G::PN; ++j) {
        const int64_t at = static_cast<int64_t>(wr * G::WM + i * Mma::kM) * p_.ld + col + wc * G::PWN + j * Mma::kN;
        wmma::store_matrix_sync(rows + at, prod[i][j], static_cast<unsigned>(p_.ld), wmma::mem_row_major);
      }
  }

  // Columns [col, col + DC) of Z_b's rows (and, off the diagonal, Z_a's) into shared memory.
  __device__ void load_chunks(int64_t row_a, int64_t row_b, int64_t col, bool diagonal) {
    load_rows<G::DC>(chunk_b(), G::LDC, row_b, col);
    if (!diagonal) load_rows<G::DC>(chunk_a(), G::LDC, row_a, col);
    copy_async_commit();
    copy_async_wait<0>();
    __syncthreads();
  }
  __device__ op_t* chunk_b() const { return reinterpret_cast<op_t*>(region_g_); }
  __device__ op_t* chunk_a() const { return reinterpret_cast<op_t*>(region_g_ + G::kChunk); }

  // The loaded chunk of W Z_b (W's rows against Z_b's chunk) or, kTransposed, of W^T Z_a
  // (W's columns against Z_a's chunk): one product at a time keeps the 16-bit kernels
  // within their registers.
  template <bool kTransposed>
  __device__ void chunk_product(Acc (&prod)[G::PM][G::PN]) const {
    using WLayout = typename std::conditional<kTransposed, wmma::col_major, wmma::row_major>::type;
    const op_t* chunk = kTransposed ? chunk_a() : chunk_b();
    const int warp = threadIdx.x / 32;
    const int wr = warp / kWarpCols, wc = warp % kWarpCols;
#pragma unroll
    for (int i = 0; i < G::PM; ++i)
#pragma unroll
      for (int j = 0; j < G::PN; ++j) wmma::fill_fragment(prod[i][j], acc_t(0));
    for (int kk = 0; kk < B; kk += Mma::kK) {
      Operand<Frag<wmma::matrix_b, wmma::row_major>> fz[G::PN];
#pragma unroll
      for (int j = 0; j < G::PN; ++j) {
        wmma::load_matrix_sync(fz[j].hi, chunk + kk * G::LDC + wc * G::PWN + j * Mma::kN, G::LDC);
        Mma::prepare(fz[j]);
      }
#pragma unroll
      for (int i = 0; i < G::PM; ++i) {
        // W's rows i summed over its columns kk, or W's columns i (read column-major)
        // summed over its rows kk.
        const int row = wr * G::WM + i * Mma::kM;
        Operand<Frag<wmma::matrix_a, WLayout>> fw;
        wmma::load_matrix_sync(fw.hi, kTransposed ? w_ + kk * ldw_ + row : w_ + row * ldw_ + kk, ldw_);
        Mma::prepare(fw);
#pragma unroll
        for (int j = 0; j < G::PN; ++j) Mma::mma(prod[i][j], fw, fz[j]);
      }
    }
  }

  __device__ void store_products(Acc (&prod)[G::PM][G::PN], int wr, int wc) {
#pragma unroll
    for (int i = 0; i < G::PM; ++i)
#pragma unroll
      for (int j = 0; j < G::PN; ++j) {
        wmma::store_matrix_sync(staging_ + (wr * G::WM + i * Mma::kM) * G::LDO + wc * G::PWN + j * Mma::kN,
                                prod[i][j], G::LDO, wmma::mem_row_major);
      }
  }

  using Vec = typename std::conditional<std::is_same<acc_t, float>::value, float4, double2>::type;
  static constexpr int kVec = 16 / int(sizeof(acc_t));

  // acc[row .. row+B, col .. col+DC] <- acc * f + alpha * staging, 16 bytes at a time.
  // Rows and columns past the data hold zero products and stay zero.  Loads are issued in
  // batches of up to kBatch vectors before their stores (one L2 round trip per batch, not
  // per vector; the batch bounds the registers of the 16-bit kernels, at 255 already).
  __device__ void accumulate(int64_t row, int64_t col, acc_t f, acc_t alpha) {
    constexpr int kPerRow = G::DC / kVec;
    constexpr int kItems = B * kPerRow / kTileThreads;
    constexpr int kBatch = kItems < 4 ? kItems : 4;
    static_assert(B * kPerRow % kTileThreads == 0 && kItems % kBatch == 0, "whole batches per thread");
    acc_t* __restrict__ base = p_.acc + row * p_.ld + col;
    const acc_t* __restrict__ staged = staging_;
#pragma unroll
    for (int first = 0; first < kItems; first += kBatch) {
      Vec held[kBatch];
#pragma unroll
      for (int it = 0; it < kBatch; ++it) {
        const int idx = threadIdx.x + (first + it) * kTileThreads;
        const int r = idx / kPerRow, c = (idx % kPerRow) * kVec;
        held[it] = __ldcg(reinterpret_cast<const Vec*>(base + static_cast<int64_t>(r) * p_.ld + c));
      }
#pragma unroll
      for (int it = 0; it < kBatch; ++it) {
        const int idx = threadIdx.x + (first + it) * kTileThreads;
        const int r = idx / kPerRow, c = (idx % kPerRow) * kVec;
        update16(held[it], *reinterpret_cast<const Vec*>(staged + r * G::LDO + c), f, alpha);
        __stcg(reinterpret_cast<Vec*>(base + static_cast<int64_t>(r) * p_.ld + c), held[it]);
      }
    }
  }

  // Products first: acc[row .. row+B, :] <- acc * f + alpha * staged (B x ld, the same
  // layout), the whole width; both operands of a batch are loaded before its stores.
  // The same update16 as accumulate: the two paths give the same bits.
  __device__ void accumulate_staged(int64_t row, const acc_t* staged, acc_t f, acc_t alpha) {
    constexpr int kBatch = 4;
    acc_t* __restrict__ base = p_.acc + row * p_.ld;
    // No __restrict__ here: const + restrict would allow the non-coherent load path,
    // which need not see the rows this CTA rewrites every tile.
    const Vec* src = reinterpret_cast<const Vec*>(staged);
    Vec* __restrict__ dst = reinterpret_cast<Vec*>(base);
    const int64_t vectors = static_cast<int64_t>(B) * p_.ld / kVec;  // ld is a multiple of kVec
    for (int64_t first = threadIdx.x; first < vectors; first += int64_t(kBatch) * kTileThreads) {
      Vec held[kBatch], add[kBatch];
#pragma unroll
      for (int it = 0; it < kBatch; ++it) {
        const int64_t v = first + int64_t(it) * kTileThreads;
        if (v < vectors) {
          held[it] = __ldcg(dst + v);
          add[it] = src[v];  // this CTA's own writes, before the turn's barrier
        }
      }
#pragma unroll
      for (int it = 0; it < kBatch; ++it) {
        const int64_t v = first + int64_t(it) * kTileThreads;
        if (v < vectors) {
          update16(held[it], add[it], f, alpha);
          __stcg(dst + v, held[it]);
        }
      }
    }
  }

  // v * f + alpha * s with the rounding spelled out (a product, then one fused
  // multiply-add), so that both paths give the same bits whatever the compiler contracts.
  static __device__ __forceinline__ void update16(float4& v, const float4& s, float f, float alpha) {
    v.x = __fmaf_rn(v.x, f, __fmul_rn(alpha, s.x));
    v.y = __fmaf_rn(v.y, f, __fmul_rn(alpha, s.y));
    v.z = __fmaf_rn(v.z, f, __fmul_rn(alpha, s.z));
    v.w = __fmaf_rn(v.w, f, __fmul_rn(alpha, s.w));
  }
  static __device__ __forceinline__ void update16(double2& v, const double2& s, double f, double alpha) {
    v.x = __fma_rn(v.x, f, __dmul_rn(alpha, s.x));
    v.y = __fma_rn(v.y, f, __dmul_rn(alpha, s.y));
  }

  // Largest value over the CTA (exact in any order).
  __device__ acc_t block_max(acc_t v) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      const acc_t o = __shfl_xor_sync(0xffffffffu, v, offset);
      v = o > v ? o : v;
    }
    __syncthreads();  // scratch_ may still be read from the previous tile
    if (lane == 0) scratch_[warp] = v;
    __syncthreads();
    acc_t m = scratch_[0];
    for (int w = 1; w < kTileThreads / 32; ++w) m = scratch_[w] > m ? scratch_[w] : m;
    __syncthreads();  // everyone has read scratch_ before it is reused
    return m;
  }

  TileParams<acc_t, op_t> p_;
  TileOrder order_;
  unsigned char* region_g_;
  acc_t* s_;
  acc_t* vectors_;
  acc_t* scratch_;
  acc_t *sq_a_, *sq_b_, *row_sums_, *col_sums_;
  op_t* w_;
  int ldw_;
  acc_t* staging_;
  // scratch_[0..3]: the update factors; scratch_[kTileTotal]: the tile's total (no gradient).
  static constexpr int kTileTotal = 4;
};

// 64-row tiles (and float64's) declare one CTA per SM: where shared memory chooses them,
// on 99 KiB devices, a second 55 KiB tile does not fit, and ptxas's own cap (128
// registers, for that second CTA) made the 3xTF32 one spill.  Forced on Hopper
// (PYHS_CUDA_BLOCK_ROWS=64) they now run one CTA per SM, not two.  The 128-row tiles
// (minBlocks 0: no bound) fit one CTA per SM by shared memory anyway.
template <class Mma, bool kStaged>
__global__ void __launch_bounds__(kTileThreads, Mma::kBlock == 64 ? 1 : 0)
    uniform_tiles_kernel(TileParams<typename Mma::acc_t, typename Mma::op_t> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ int64_t claimed;
  TileWorker<Mma, kStaged> worker(p, smem);
  for (;;) {
    if (threadIdx.x == 0) claimed = p.begin + static_cast<int64_t>(atomicAdd(p.next_tile, 1ULL));
    __syncthreads();
    const int64_t f = claimed;
    __syncthreads();  // `claimed` is rewritten by the next claim only after everyone read it
    if (f >= p.end) break;
    worker.run(f);
  }
#else
  __trap();  // built for an architecture without the sm_80 tensor-core instructions
#endif
}

// ---------------------------------------------------------------- row kernels

template <class T>
__global__ void fill_kernel(T* out, int64_t count, T value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = value;
  }
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Padded row p holds data row src(p): x's rows at [0, n), the queue's at
// [x_rows, x_rows + k), zeros elsewhere and in columns [d, ld).  sq[p] = ||row||^2 of
// the values as stored (op_t, rounded by Mma::round_operand), so the tile distances are
// those of the rows the tensor cores multiply.
template <class Mma, class op_t = typename Mma::op_t, class acc_t = typename Mma::acc_t>
__global__ void pack_rows_kernel(const op_t* rows, int64_t n, int64_t k, int64_t d, int64_t x_rows,
                                 int64_t padded_rows, int64_t ld, op_t* z, acc_t* sq) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t p = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; p < padded_rows;
       p += warps) {
    const int64_t src = p < x_rows ? (p < n ? p : -1) : (p - x_rows < k ? n + (p - x_rows) : -1);
    acc_t s = 0;
    for (int64_t c = lane; c < ld; c += 32) {
      const op_t v = (src >= 0 && c < d) ? Mma::round_operand(rows[src * d + c])
                                         : from_acc<op_t>(acc_t(0));
      z[p * ld + c] = v;
      const acc_t a = to_acc(v);
      s += a * a;
    }
    s = warp_sum(s);
    if (lane == 0) sq[p] = s;
  }
}

// One CTA: the global shift m = max_B M_B, the total S = sum_B S_B exp(M_B - m) in
// double (fixed order), lse = m + log S (a double: the loss lse - log |P| keeps its digits
// only if lse does; ops.h); stats = {m, S} for the gradient kernel.
// In the gradient mode S_B = (sum of the block's row sums) / 2: each pair is in two rows.
template <class acc_t>
__global__ void __launch_bounds__(kFinishThreads)
    finish_kernel(const acc_t* shift, const acc_t* block_sum, const acc_t* row_sum, int64_t blocks,
                  int block_rows, bool grad, double* lse, acc_t* stats) {
  __shared__ double scratch[kFinishThreads];
  const int tid = threadIdx.x;
  acc_t m = negative_infinity<acc_t>();
  for (int64_t b = tid; b < blocks; b += kFinishThreads) m = shift[b] > m ? shift[b] : m;
  scratch[tid] = static_cast<double>(m);
  __syncthreads();
  for (int s = kFinishThreads / 2; s > 0; s /= 2) {
    if (tid < s) scratch[tid] = scratch[tid + s] > scratch[tid] ? scratch[tid + s] : scratch[tid];
    __syncthreads();
  }
  const acc_t global = static_cast<acc_t>(scratch[0]);
  __syncthreads();

  // Each block's held sum by one warp: lanes stride over its row sums (coalesced), a
  // fixed shuffle tree combines them; lane 0 keeps its warp's running total.
  const int warp = tid / 32, lane = tid % 32;
  double total = 0;
  for (int64_t b = warp; b < blocks; b += kFinishThreads / 32) {
    double held;
    if (grad) {
      double rows = 0;
      for (int i = lane; i < block_rows; i += 32) rows += static_cast<double>(row_sum[b * block_rows + i]);
      held = 0.5 * warp_sum(rows);
    } else {
      held = static_cast<double>(block_sum[b]);
    }
    if (lane == 0 && shift[b] != negative_infinity<acc_t>()) {  // else a block without pairs
      total += held * std::exp(static_cast<double>(shift[b]) - static_cast<double>(global));
    }
  }
  scratch[tid] = total;
  __syncthreads();
  for (int s = kFinishThreads / 2; s > 0; s /= 2) {
    if (tid < s) scratch[tid] += scratch[tid + s];
    __syncthreads();
  }
  if (tid == 0) {
    const double sum = scratch[0];
    const double value = sum > 0 ? static_cast<double>(global) + std::log(sum)
                                 : -std::numeric_limits<double>::infinity();
    lse[0] = value;
    stats[0] = global;
    stats[1] = static_cast<acc_t>(sum);
  }
}

// grad[o] = scale_B (s_p z_p - acc_p) for data row o at padded row p (block B = p / B).
template <class op_t, class acc_t>
__global__ void gradient_kernel(const op_t* z, const acc_t* row_sum, const acc_t* acc,
                                const acc_t* shift, const acc_t* stats, int64_t ld, int64_t n,
                                int64_t k, int64_t d, int64_t x_rows, int block_rows, acc_t t,
                                acc_t* grad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t o = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; o < n + k; o += warps) {
    const int64_t p = o < n ? o : x_rows + (o - n);
    const acc_t scale = math::gradient_scale<acc_t>(t, shift[p / block_rows], stats[0], stats[1]);
    const acc_t s = row_sum[p];
    for (int64_t c = lane; c < d; c += 32) {
      grad[o * d + c] = scale * (s * to_acc(z[p * ld + c]) - acc[p * ld + c]);
    }
  }
}

// Side groups (gradient mode): fold each small-side block's private slots into its own
// state, in group order (deterministic).  First, per block: the merged shift M (the
// largest) and the factor exp(M_slot - M) of its own state and of each slot (0 for a slot
// without pairs).  factors: [small][1 + groups].
template <class acc_t>
__global__ void merge_shifts_kernel(acc_t* shift, int64_t small, int64_t first_block, int64_t groups,
                                    int64_t slot_base, acc_t* factors) {
  for (int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; s < small;
       s += int64_t(gridDim.x) * blockDim.x) {
    const int64_t own = first_block + s;
    const int64_t slots = slot_base + s * groups;
    acc_t top = shift[own];
    for (int64_t g = 0; g < groups; ++g) top = shift[slots + g] > top ? shift[slots + g] : top;
    acc_t* f = factors + s * (groups + 1);
    f[0] = math::rescale_factor(shift[own], top);
    for (int64_t g = 0; g < groups; ++g) f[1 + g] = math::rescale_factor(shift[slots + g], top);
    shift[own] = top;
  }
}

// Then the row sums and accumulators, a warp per padded row.
template <class acc_t>
__global__ void merge_rows_kernel(acc_t* row_sum, acc_t* acc, int64_t small, int64_t first_block,
                                  int64_t groups, int64_t slot_base, int block_rows, int64_t ld,
                                  const acc_t* factors) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t item = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; item < small * block_rows;
       item += warps) {
    const int64_t s = item / block_rows, r = item % block_rows;
    const acc_t* f = factors + s * (groups + 1);
    const int64_t own = (first_block + s) * block_rows + r;
    const int64_t slots = (slot_base + s * groups) * block_rows + r;
    if (lane == 0) {
      acc_t sum = row_sum[own] * f[0];
      for (int64_t g = 0; g < groups; ++g) sum += row_sum[slots + g * block_rows] * f[1 + g];
      row_sum[own] = sum;
    }
    for (int64_t c = lane; c < ld; c += 32) {
      acc_t v = acc[own * ld + c] * f[0];
      for (int64_t g = 0; g < groups; ++g) v += acc[(slots + g * block_rows) * ld + c] * f[1 + g];
      acc[own * ld + c] = v;
    }
  }
}

// ---------------------------------------------------------------- host side

// CTAs for `items` work items handled `per_cta` at a time (grid-stride loops beyond 2^20).
int grid_for(int64_t items, int64_t per_cta) {
  const int64_t ctas = (items + per_cta - 1) / per_cta;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ctas, int64_t(1) << 20)));
}

// Where each buffer sits in the workspace, a pure function of the problem.
struct Workspace {
  size_t z = 0, sq = 0, shift = 0, block_sum = 0, stats = 0, tickets = 0, row_sum = 0, acc = 0;
  size_t factors = 0, staged = 0;
  size_t bytes = 0;
  int64_t block_rows = 0, x_blocks = 0, queue_blocks = 0, padded_rows = 0, ld = 0;
  // State slots (TileParams): with the gradient, blocks + small_blocks * groups (side
  // groups; groups 0: off), small_blocks being TileOrder's small side (the x blocks when
  // there are no more of them); without it, total_chains.
  int64_t groups = 0, slots = 0, small_blocks = 0, first_small_block = 0;
  int64_t begin = 0, end = 0;  // this part's slice of the tile numbering
  int64_t total_chains = 0;
};

// Side groups for a problem (UniformProblem::side_groups): 0 (off), or G, the number of
// private states per small-side block (one per residue of the large-side block mod G).
// A state's consecutive updates are G rounds, G * small tiles, apart: automatic G puts
// them kSideChains tiles apart, more than the tiles in flight on one GPU (a CTA per SM),
// with the private accumulators within the larger of kSideBytes and the rows' own.  A
// function of the shape only, not of the device: the results must not depend on it.
constexpr int64_t kSideChains = 256;
constexpr size_t kSideBytes = size_t(64) << 20;

// Without the gradient each tile adds one total to one of kTotalChains slots, tile f to
// slot (f - begin) mod kTotalChains: a slot's updates come kTotalChains tiles apart, more
// than the tiles in flight, and the finish kernel sums the slots in a fixed order.
constexpr int64_t kTotalChains = 512;

void plan_slots(const UniformProblem& problem, Workspace& w, size_t acc_bytes_per_block) {
  const TileOrder order(w.x_blocks, w.queue_blocks, problem.intra_batch);
  const int64_t total = order.size();
  w.begin = total * problem.part / problem.num_parts;  // tile_schedule.cpp's slicing
  w.end = total * (problem.part + 1) / problem.num_parts;
  const int64_t small = order.small_blocks(), large = order.large_blocks();
  const int64_t blocks = w.x_blocks + w.queue_blocks;
  w.small_blocks = small;
  w.first_small_block = order.x_is_small() ? 0 : w.x_blocks;
  w.groups = 0;
  if (!problem.compute_grad) {
    w.total_chains = std::max<int64_t>(1, std::min(kTotalChains, w.end - w.begin));
    w.slots = w.total_chains;
    return;
  }
  w.slots = blocks;
  if (problem.side_groups == 0 || small == 0) return;
  int64_t groups = problem.side_groups > 0 ? problem.side_groups : (kSideChains + small - 1) / small;
  if (problem.side_groups < 0) {
    const size_t budget = std::max(kSideBytes, static_cast<size_t>(blocks) * acc_bytes_per_block);
    groups = std::min<int64_t>(groups, static_cast<int64_t>(budget / (static_cast<size_t>(small) * acc_bytes_per_block)));
  }
  groups = std::min(groups, large);  // every group holds a block
  if (groups <= 1) return;
  w.groups = groups;
  w.slots = blocks + small * w.groups;
}

template <class Mma>
Workspace plan_workspace(const UniformProblem& problem) {
  using G = TileGeometry<Mma>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  Workspace w;
  w.block_rows = G::B;
  w.x_blocks = blocks_for(problem.n, G::B);
  w.queue_blocks = blocks_for(problem.k, G::B);
  const int64_t blocks = w.x_blocks + w.queue_blocks;
  w.padded_rows = blocks * G::B;
  w.ld = static_cast<int64_t>(round_up(static_cast<size_t>(problem.d), G::kPadD));
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at = round_up(at + bytes, 256);
    return here;
  };
  const size_t rows = static_cast<size_t>(w.padded_rows);
  plan_slots(problem, w, static_cast<size_t>(G::B) * static_cast<size_t>(w.ld) * sizeof(acc_t));
  const size_t slots = static_cast<size_t>(w.slots);
  const size_t slot_rows = slots * static_cast<size_t>(G::B);
  w.z = take(rows * static_cast<size_t>(w.ld) * sizeof(op_t));
  w.sq = take(rows * sizeof(acc_t));
  w.shift = take(slots * sizeof(acc_t));
  w.block_sum = take(slots * sizeof(acc_t));
  w.stats = take(2 * sizeof(acc_t));
  w.tickets = take((slots + 1) * sizeof(unsigned long long));  // + the claim counter
  if (w.groups > 0) {
    w.factors = take(static_cast<size_t>(w.small_blocks) * static_cast<size_t>(w.groups + 1) * sizeof(acc_t));
  }
  if (problem.compute_grad) {
    w.row_sum = take(slot_rows * sizeof(acc_t));
    w.acc = take(slot_rows * static_cast<size_t>(w.ld) * sizeof(acc_t));
    if (problem.products_first_ctas > 0) {
      w.staged = take(static_cast<size_t>(problem.products_first_ctas) * 2 * G::B * static_cast<size_t>(w.ld) *
                      sizeof(acc_t));
    }
  }
  w.bytes = at;
  return w;
}

// The tile kernel: the default one, or products first.
template <class Mma>
auto tile_kernel(bool products_first) {
  return products_first ? uniform_tiles_kernel<Mma, true> : uniform_tiles_kernel<Mma, false>;
}

// CTAs of the tile kernel (default or products first) resident at once on the current
// device: the SMs times what shared memory and registers allow per SM.  Also sets the
// kernel's dynamic shared memory limit, which the launch needs.
template <class Mma>
cudaError_t resident_tile_ctas(bool products_first, int64_t* ctas) {
  constexpr size_t smem = TileGeometry<Mma>::kSmemBytes;
  const auto kernel = tile_kernel<Mma>(products_first);
  cudaError_t err;
  if ((err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem))) != cudaSuccess) {
    return err;
  }
  int device = 0, sms = 0, per_sm = 0;
  if ((err = cudaGetDevice(&device)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return err;
  if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kTileThreads, smem)) != cudaSuccess) {
    return err;
  }
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  *ctas = int64_t(sms) * per_sm;
  return cudaSuccess;
}

template <class Mma>
cudaError_t launch_with(const UniformProblem& problem, void* workspace, void* lse_out,
                        void* grad_out, cudaStream_t stream) {
  using G = TileGeometry<Mma>;
  using op_t = typename Mma::op_t;
  using acc_t = typename Mma::acc_t;
  const Workspace w = plan_workspace<Mma>(problem);
  unsigned char* base = static_cast<unsigned char*>(workspace);
  const int64_t blocks = w.x_blocks + w.queue_blocks;

  TileParams<acc_t, op_t> p;
  p.z = reinterpret_cast<op_t*>(base + w.z);
  p.sq = reinterpret_cast<acc_t*>(base + w.sq);
  p.ld = w.ld;
  p.n = problem.n;
  p.k = problem.k;
  p.x_blocks = w.x_blocks;
  p.queue_blocks = w.queue_blocks;
  p.intra_batch = problem.intra_batch;
  p.grad = problem.compute_grad;
  p.t = static_cast<acc_t>(problem.t);
  p.shift = reinterpret_cast<acc_t*>(base + w.shift);
  p.block_sum = reinterpret_cast<acc_t*>(base + w.block_sum);
  p.row_sum = problem.compute_grad ? reinterpret_cast<acc_t*>(base + w.row_sum) : nullptr;
  p.acc = problem.compute_grad ? reinterpret_cast<acc_t*>(base + w.acc) : nullptr;
  p.tickets = reinterpret_cast<unsigned long long*>(base + w.tickets);
  p.next_tile = p.tickets + w.slots;
  p.groups = w.groups;
  p.slot_base = blocks;
  p.total_chains = w.total_chains;
  const bool staged = problem.compute_grad && problem.products_first_ctas > 0;
  p.staged = staged ? reinterpret_cast<acc_t*>(base + w.staged) : nullptr;
  p.begin = w.begin;
  p.end = w.end;
  acc_t* stats = reinterpret_cast<acc_t*>(base + w.stats);

  cudaError_t err;
  const size_t slots = static_cast<size_t>(w.slots);
  const size_t ticket_bytes = (slots + 1) * sizeof(unsigned long long);
  if ((err = cudaMemsetAsync(p.tickets, 0, ticket_bytes, stream)) != cudaSuccess) return err;
  if ((err = cudaMemsetAsync(p.block_sum, 0, slots * sizeof(acc_t), stream)) != cudaSuccess) return err;
  if (problem.compute_grad) {
    const size_t slot_rows = slots * static_cast<size_t>(G::B);
    if ((err = cudaMemsetAsync(p.row_sum, 0, slot_rows * sizeof(acc_t), stream)) != cudaSuccess) return err;
    if ((err = cudaMemsetAsync(p.acc, 0, slot_rows * w.ld * sizeof(acc_t), stream)) != cudaSuccess) return err;
  }
  fill_kernel<acc_t><<<grid_for(w.slots, 256), 256, 0, stream>>>(p.shift, w.slots,
                                                           -std::numeric_limits<acc_t>::infinity());
  pack_rows_kernel<Mma><<<grid_for(w.padded_rows, kRowWarps), 32 * kRowWarps, 0, stream>>>(
      static_cast<const op_t*>(problem.rows), problem.n, problem.k, problem.d,
      w.x_blocks * G::B, w.padded_rows, w.ld, const_cast<op_t*>(p.z), const_cast<acc_t*>(p.sq));
  if ((err = cudaGetLastError()) != cudaSuccess) return err;

  if (p.end > p.begin) {
    const auto kernel = tile_kernel<Mma>(staged);
    constexpr size_t smem = G::kSmemBytes;
    int64_t resident = 0;
    if ((err = resident_tile_ctas<Mma>(staged, &resident)) != cudaSuccess) return err;
    int64_t ctas = std::min<int64_t>(p.end - p.begin, resident);
    if (problem.max_ctas > 0) ctas = std::min<int64_t>(ctas, problem.max_ctas);
    if (staged) ctas = std::min<int64_t>(ctas, problem.products_first_ctas);  // the staging it holds
    kernel<<<static_cast<int>(ctas), kTileThreads, smem, stream>>>(p);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }
  if (w.groups > 0) {
    acc_t* factors = reinterpret_cast<acc_t*>(base + w.factors);
    merge_shifts_kernel<acc_t><<<grid_for(w.small_blocks, 256), 256, 0, stream>>>(
        p.shift, w.small_blocks, w.first_small_block, w.groups, blocks, factors);
    merge_rows_kernel<acc_t><<<grid_for(w.small_blocks * G::B, kRowWarps), 32 * kRowWarps, 0, stream>>>(
        p.row_sum, p.acc, w.small_blocks, w.first_small_block, w.groups, blocks, G::B, w.ld, factors);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
  }

  // With the gradient the blocks' own states (their first `blocks` slots); without, the chains'.
  finish_kernel<acc_t><<<1, kFinishThreads, 0, stream>>>(p.shift, p.block_sum, p.row_sum,
                                                         problem.compute_grad ? blocks : w.slots,
                                                         G::B, problem.compute_grad,
                                                         static_cast<double*>(lse_out), stats);
  if (problem.compute_grad) {
    gradient_kernel<op_t, acc_t><<<grid_for(problem.n + problem.k, kRowWarps), 32 * kRowWarps, 0, stream>>>(
        p.z, p.row_sum, p.acc, p.shift, stats, w.ld, problem.n, problem.k, problem.d,
        w.x_blocks * G::B, G::B, p.t, static_cast<acc_t*>(grad_out));
  }
  return cudaGetLastError();
}

// The kernel of a precision and block size: the default block, or 64 rows for the
// float and 16-bit kernels (float64's default is 64 already).
template <class F>
auto with_mma(UniformPrecision precision, int64_t block_rows, F&& f) {
  const bool small = block_rows == 64;
  switch (precision) {
    case UniformPrecision::kBf16:
      return small ? f(WithBlock<Bf16Mma, 64>{}) : f(Bf16Mma{});
    case UniformPrecision::kFp16:
      return small ? f(WithBlock<F16Mma, 64>{}) : f(F16Mma{});
    case UniformPrecision::kTf32:
      return small ? f(WithBlock<Tf32Mma, 64>{}) : f(Tf32Mma{});
    case UniformPrecision::kFp64:
      return f(F64Mma{});
    case UniformPrecision::kFp32:
    default:
      return small ? f(WithBlock<Tf32x3Mma, 64>{}) : f(Tf32x3Mma{});
  }
}

}  // namespace

int64_t uniform_block_rows(UniformPrecision precision) {
  return with_mma(precision, 0, [](auto mma) -> int64_t { return decltype(mma)::kBlock; });
}

namespace {

// Whether a tile kernel exists for blocks of `block_rows` rows (0: the default; else the
// default or 64, what with_mma selects).
bool has_kernel(UniformPrecision precision, int64_t block_rows) {
  return block_rows == 0 || block_rows == 64 || block_rows == uniform_block_rows(precision);
}

}  // namespace

size_t uniform_shared_memory_bytes(UniformPrecision precision, int64_t block_rows) {
  return with_mma(precision, block_rows, [](auto mma) -> size_t {
    return TileGeometry<decltype(mma)>::kSmemBytes;
  });
}

int64_t uniform_block_rows_for(UniformPrecision precision, int64_t smem_optin) {
  const int64_t rows = uniform_block_rows(precision);
  for (const int64_t candidate : {rows, rows / 2}) {
    if (candidate < 64) break;  // no 32-row kernel
    if (static_cast<int64_t>(uniform_shared_memory_bytes(precision, candidate)) <= smem_optin) {
      return candidate;
    }
  }
  return 0;
}

cudaError_t uniform_resident_tile_ctas(UniformPrecision precision, int64_t block_rows, bool products_first,
                                      int64_t* ctas) {
  if (ctas == nullptr || !has_kernel(precision, block_rows)) return cudaErrorInvalidValue;
  return with_mma(precision, block_rows,
                  [&](auto mma) { return resident_tile_ctas<decltype(mma)>(products_first, ctas); });
}

size_t uniform_workspace_bytes(const UniformProblem& problem) {
  return with_mma(problem.precision, problem.block_rows,
                  [&](auto mma) -> size_t { return plan_workspace<decltype(mma)>(problem).bytes; });
}

cudaError_t launch_uniform_lse(const UniformProblem& problem, void* workspace, void* lse,
                               void* grad_rows, cudaStream_t stream) {
  if (problem.n < 1 || problem.k < 0 || problem.d < 1 || problem.num_parts < 1 ||
      problem.part < 0 || problem.part >= problem.num_parts || problem.max_ctas < 0 ||
      problem.side_groups < -1 || problem.products_first_ctas < 0 ||
      !has_kernel(problem.precision, problem.block_rows) ||
      (problem.compute_grad && grad_rows == nullptr) || lse == nullptr || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  return with_mma(problem.precision, problem.block_rows, [&](auto mma) {
    return launch_with<decltype(mma)>(problem, workspace, lse, grad_rows, stream);
  });
}

}  // namespace cuda
}  // namespace pyhypersphere
