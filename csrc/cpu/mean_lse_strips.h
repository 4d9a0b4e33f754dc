// The CPU kernel of contrastive_mean_lse and contrastive_lse_row_grad (ops.h) in row
// strips: every row's lse over its partners (b's rows, except b_i when the positives are
// skipped) and the products of its softmax weights with b (and a, for b's gradient) from
// the same logits, 2 GEMMs' worth (3 with b's gradient) instead of the two-pass kernel's
// 3 (4).
//
// A strip is a block of a's rows against all of b: its logits S = scale A_blk B^T
// [rows x N_b] are computed once into the thread's workspace, column block by column
// block c (GEMM, then while the block is in cache its row maxima m_c and exp(S - m_c) in
// place, their sums merged into each row's running sum), which gives the rows' final
// lse n_i (a skipped positive's logit is set to -inf before the maxima, and its exp to
// 0).  Then, column block by column block again: the weights
// P = exp(S - m_c) * exp(m_c - n_i) * w_i, w_i a per-row factor of the caller's (a
// multiply per element: each exp is taken once, 5% faster than recomputing
// exp(S - n_i)), a skipped positive's exactly 0, grad_a rows += P B (rows owned by the
// strip) and grad_b's column block += P^T A_blk, each column block's updates in strip
// order (block_turns.h), so the results are bitwise identical at any thread count.  The
// strip's rows depend on the shape only, never on the thread count; the workers (threads)
// holding a strip at once are capped so that all strips together stay within 256 MiB.
// Without grad_b nothing needs the final lse before the products: the strip runs the
// flash-attention forward instead (a running max per row, the accumulator rescaled where
// it grows, exp(S - max) B_c per column block; one column block of logits held, never the
// strip), and scales each row by w_i / (its sum) at the end.
//
// Only an upstream gradient known per row before the pass allows this: the weights need
// nothing but their own rows' lse (and whatever the caller's factor reads).  InfoNCE's
// mean loss: w_i = (scale / N_a) e^(n_i - lse with the positive); the positive's term of
// the gradient (-weight_i b_i) is the caller's.  contrastive_lse_row_grad: w_i = 1, and no
// grad_b (o_i = sum_j p_ij b_j).  A loss that weights rows differently after the fact, or
// that needs the column lse (CLIP), takes the two-pass kernel (contrastive_cpu.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace pyhypersphere {
namespace cpu {

// Rows per strip for a [N_a, d] against [N_b, d] problem with elements of `elem_bytes`,
// a strip's logits within `budget_bytes`; 0 when even the smallest strip exceeds it
// (the caller then takes the two-pass kernel).
int64_t mean_lse_strip_rows(int64_t na, int64_t nb, int64_t elem_bytes, int64_t budget_bytes);

// The budget for one strip's logits: 64 MiB, or PYHYPERSPHERE_STRIP_BUDGET_BYTES
// (tests only: forces the two-pass fallback with small problems).
int64_t mean_lse_strip_budget_bytes();

// The factor w_i of row i's weights, given its index and its lse over its partners n_i
// (finite: a row without partners gets no weights).
using RowWeight = std::function<double(int64_t row, double lse)>;

// Every row's lse over its partners (b's rows; without b_i when skip_positives) into
// lse[0, N_a) and, when grad_a / grad_b are non-null, sum_j P_ij b_j (and sum_i P_ij a_i
// for b_j) with P_ij = row_weight(i, n_i) e^(s_ij - n_i) accumulated into them
// (zero-initialized [N_a, d] / [N_b, d]).
template <typename T>
void mean_lse_strips(const T* a, int64_t na, const T* b, int64_t nb, int64_t d, T scale,
                     int64_t strip_rows, bool skip_positives, const RowWeight& row_weight,
                     std::vector<double>& lse, T* grad_a, T* grad_b);

}  // namespace cpu
}  // namespace pyhypersphere
