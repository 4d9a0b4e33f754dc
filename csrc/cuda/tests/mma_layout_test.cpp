// Host test of the row-block kernel's fragment arithmetic (mma_layout.h) against the
// PTX ISA's documented layouts, written out here independently (PTX ISA, "Matrix
// fragments for mma.m16n8k16 / m16n8k8 / m8n8k4" and "ldmatrix"):
//   1. each layout function matches the ISA's formula for every lane and register;
//   2. a warp's products emulated register by register, as the kernel assembles them
//      (ldmatrix addresses and deliveries, the accumulators of S reused as the A of
//      P V, the permuted k of TF32 and f64), equal the plain matrix products;
//   3. the diagonal mask (self_pair_key) selects exactly the self pairs.
// No GPU needed; built and run by .ci/cuda_compile_check.sh.
#include "../mma_layout.h"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

namespace L = pyhypersphere::cuda::layout;

int failures = 0;
void expect(bool ok, const char* what, int a = 0, int b = 0) {
  if (!ok && ++failures <= 20) std::printf("FAIL %s (%d, %d)\n", what, a, b);
}

// ---------------------------------------------------------------- the ISA's tables

struct RC {
  int row, col;
};
int gid(int lane) { return lane / 4; }
int tig(int lane) { return lane % 4; }
// m16n8k16 (.bf16/.f16): A element i in 0..7, B element i in 0..3, C element i in 0..3.
RC isa_a16(int lane, int i) { return {gid(lane) + ((i % 4) >= 2 ? 8 : 0), tig(lane) * 2 + (i % 2) + (i >= 4 ? 8 : 0)}; }
RC isa_b16(int lane, int i) { return {tig(lane) * 2 + (i % 2) + (i >= 2 ? 8 : 0), gid(lane)}; }
RC isa_c16(int lane, int i) { return {gid(lane) + (i >= 2 ? 8 : 0), tig(lane) * 2 + (i % 2)}; }
// m16n8k8 (.tf32): A element i in 0..3, B element i in 0..1.
RC isa_a_tf32(int lane, int i) { return {gid(lane) + (i % 2 ? 8 : 0), tig(lane) + (i >= 2 ? 4 : 0)}; }
RC isa_b_tf32(int lane, int i) { return {tig(lane) + (i ? 4 : 0), gid(lane)}; }
// m8n8k4 (.f64): A, B one element, C two.
RC isa_a_f64(int lane) { return {gid(lane), tig(lane)}; }
RC isa_b_f64(int lane) { return {tig(lane), gid(lane)}; }
RC isa_c_f64(int lane, int i) { return {gid(lane), 2 * tig(lane) + i}; }
// ldmatrix .m8n8 .b16: lanes 8q..8q+7 address the rows of matrix q; lane L receives in
// register q the elements (L / 4, 2 (L % 4) + h) of matrix q, or of its transpose.
RC isa_ldmatrix(int lane, int h, bool trans) {
  const int r = lane / 4, c = 2 * (lane % 4) + h;
  return trans ? RC{c, r} : RC{r, c};
}

// ---------------------------------------------------------------- emulation

using Matrix = std::vector<std::vector<double>>;
Matrix random_matrix(int rows, int cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(-8, 8);  // small integers: exact sums
  Matrix m(rows, std::vector<double>(cols));
  for (auto& row : m)
    for (double& v : row) v = dist(rng);
  return m;
}
Matrix product(const Matrix& a, const Matrix& b) {
  Matrix c(a.size(), std::vector<double>(b[0].size(), 0.0));
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t k = 0; k < b.size(); ++k)
      for (size_t j = 0; j < b[0].size(); ++j) c[i][j] += a[i][k] * b[k][j];
  return c;
}

// A warp-wide mma: each lane's registers placed by the ISA's layouts (each element of A
// and B must be given exactly once), D = C + A B read back by the C layout.
template <class FA, class FB, class FC>
void warp_mma(int m, int n, int k, int na, int nb, int nc, const std::vector<std::vector<double>>& a,
              const std::vector<std::vector<double>>& b, std::vector<std::vector<double>>& c, FA la, FB lb, FC lc) {
  Matrix A(m, std::vector<double>(k, NAN)), B(k, std::vector<double>(n, NAN)), C(m, std::vector<double>(n, NAN));
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < na; ++i) {
      const RC p = la(lane, i);
      expect(std::isnan(A[p.row][p.col]), "A element given once", p.row, p.col);
      A[p.row][p.col] = a[lane][i];
    }
    for (int i = 0; i < nb; ++i) {
      const RC p = lb(lane, i);
      expect(std::isnan(B[p.row][p.col]), "B element given once", p.row, p.col);
      B[p.row][p.col] = b[lane][i];
    }
    for (int i = 0; i < nc; ++i) C[lc(lane, i).row][lc(lane, i).col] = c[lane][i];
  }
  const Matrix D = product(A, B);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < nc; ++i) c[lane][i] = C[lc(lane, i).row][lc(lane, i).col] + D[lc(lane, i).row][lc(lane, i).col];
}

// One k step of a warp product into two neighbouring n8 tiles of a flat [tile][4]
// accumulator: B fragments b0 (tile 2 np) and b1 (tile 2 np + 1).
template <class FA, class FB>
void mma_tile_pair(std::vector<std::vector<double>>& acc, int np, int k, int na, int nb,
                   const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b0,
                   const std::vector<std::vector<double>>& b1, FA la, FB lb) {
  for (int half = 0; half < 2; ++half) {
    std::vector<std::vector<double>> c(32, std::vector<double>(4));
    const int tile = 2 * np + half;
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) c[lane][i] = acc[lane][4 * tile + i];
    warp_mma(16, 8, k, na, nb, 4, a, half ? b1 : b0, c, la, lb, isa_c16);
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) acc[lane][4 * tile + i] = c[lane][i];
  }
}

// The accumulator [lane][e] equals `want` at the m16n8 C positions.
void expect_acc(const std::vector<std::vector<double>>& acc, const Matrix& want, const char* what) {
  for (int lane = 0; lane < 32; ++lane)
    for (size_t e = 0; e < acc[lane].size(); ++e) {
      const L::Coord p = L::acc16x8(lane, int(e % 4));
      expect(acc[lane][e] == want[p.row][8 * (e / 4) + p.col], what, lane, int(e));
    }
}

Matrix transpose(const Matrix& m) {
  Matrix t(m[0].size(), std::vector<double>(m.size()));
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[0].size(); ++j) t[j][i] = m[i][j];
  return t;
}

// The kernel's ldmatrix row addresses (always-inline functions, wrapped to be passed).
const auto a_row = [](int lane) { return L::ldmatrix_a_row(lane); };
const auto bt_row = [](int lane) { return L::ldmatrix_bt_row(lane); };
const auto v_row = a_row;  // V (with .trans) is addressed as an A block

// What ldmatrix .x4 gives lane `lane` in register q, half h: lanes 8q..8q+7 give the
// row addresses (row, col) of matrix q as the kernel computes them from `row_of`.
template <class F>
double ldmatrix_value(const Matrix& m, int row0, int col0, F row_of, int lane, int q, int h, bool trans) {
  const RC e = isa_ldmatrix(lane, h, trans);
  const L::Coord addr = row_of(8 * q + e.row);  // the lane that addressed row e.row of matrix q
  return m[row0 + addr.row][col0 + addr.col + e.col];
}

void check_layout_functions() {
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      expect(L::acc16x8(lane, i).row == isa_c16(lane, i).row && L::acc16x8(lane, i).col == isa_c16(lane, i).col,
             "acc16x8 == ISA m16n8 C", lane, i);
    }
    for (int i = 0; i < 2; ++i) {
      expect(L::acc8x8(lane, i).row == isa_c_f64(lane, i).row && L::acc8x8(lane, i).col == isa_c_f64(lane, i).col,
             "acc8x8 == ISA m8n8k4 C", lane, i);
    }
  }
  for (int p = 0; p < 8; ++p) {
    // TF32 A: k position p of a lane with thread_in_group t is column permuted_k_column(p),
    // and the accumulator element acc_of_tf32_a(r) sits at the column of register r.
    expect(L::permuted_k_column(p) == (p < 4 ? 2 * p : 2 * (p - 4) + 1), "permuted_k_column", p);
  }
  for (int lane = 0; lane < 32; ++lane) {
    for (int nr = 0; nr < 2; ++nr)
      for (int i = 0; i < 2; ++i) {
        // TF32 P^T as B: register i of row tile nr is accumulator 2 nr + i, as it lies.
        const RC b = isa_b_tf32(lane, i);
        const L::Coord c = L::acc16x8(lane, 2 * nr + i);
        expect(8 * nr + b.col == c.row && L::permuted_k_column(b.row) == c.col, "TF32 B from accumulators", lane, i);
      }
  }
}

// S = Q K^T then O = P V for one warp in 16-bit: the kernel's ldmatrix addresses, its
// A-from-accumulator reuse, and .trans for V.
void check_16bit(std::mt19937& rng) {
  const int kCols = 64, kWindow = 32;
  const Matrix q = random_matrix(16, kWindow, rng), kmat = random_matrix(kCols, kWindow, rng);
  std::vector<std::vector<double>> s(32, std::vector<double>(kCols / 2, 0.0));  // flat [tile][4]
  for (int k0 = 0; k0 < kWindow; k0 += 16) {
    std::vector<std::vector<double>> a(32, std::vector<double>(8));
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r)
        for (int h = 0; h < 2; ++h) a[lane][2 * r + h] = ldmatrix_value(q, 0, k0, a_row, lane, r, h, false);
    for (int np = 0; np < kCols / 16; ++np) {
      std::vector<std::vector<double>> b0(32, std::vector<double>(4)), b1(32, std::vector<double>(4));
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r)
          for (int h = 0; h < 2; ++h) {
            const double v = ldmatrix_value(kmat, np * 16, k0, bt_row, lane, r, h, false);
            (r < 2 ? b0 : b1)[lane][2 * (r % 2) + h] = v;
          }
      mma_tile_pair(s, np, 16, 8, 4, a, b0, b1, isa_a16, isa_b16);
    }
  }
  const Matrix want_s = product(q, transpose(kmat));
  expect_acc(s, want_s, "16-bit S = Q K^T");

  // O = P V with P = S (small integers: exact) and V = the tile's rows.
  const Matrix v = random_matrix(kCols, kWindow, rng);
  std::vector<std::vector<double>> o(32, std::vector<double>(kWindow / 2, 0.0));
  for (int kk = 0; kk < kCols / 16; ++kk) {
    std::vector<std::vector<double>> a(32, std::vector<double>(8));
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r)
        for (int h = 0; h < 2; ++h)
          a[lane][2 * r + h] = s[lane][4 * (2 * kk + L::acc_tile_of_a16(r)) + L::acc_first_of_a16(r) + h];
    for (int np = 0; np < kWindow / 16; ++np) {
      std::vector<std::vector<double>> b0(32, std::vector<double>(4)), b1(32, std::vector<double>(4));
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r)
          for (int h = 0; h < 2; ++h) {
            const double val = ldmatrix_value(v, kk * 16, np * 16, v_row, lane, r, h, true);
            (r < 2 ? b0 : b1)[lane][2 * (r % 2) + h] = val;
          }
      mma_tile_pair(o, np, 16, 8, 4, a, b0, b1, isa_a16, isa_b16);
    }
  }
  expect_acc(o, product(want_s, v), "16-bit O = P V");
}

// TF32: ldmatrix on 32-bit words (an 8 x 8 b16 matrix is 8 rows of 4 words), and P V with
// the permuted k (A registers = accumulators, V read as V[8c + 2t (+1)][8f + g]).
void check_tf32(std::mt19937& rng) {
  const int kCols = 16, kWindow = 16;
  const Matrix q = random_matrix(16, kWindow, rng), kmat = random_matrix(kCols, kWindow, rng);
  // A word w of a row is b16 columns 2w, 2w + 1: the delivered word of a lane is column
  // isa_ldmatrix(lane, 0).col / 2 of the 4-word rows, at the word offset col / 2.
  auto word = [](const Matrix& m, int row0, int col0, auto row_of, int lane, int qd) {
    const RC e = isa_ldmatrix(lane, 0, false);
    const L::Coord addr = row_of(8 * qd + e.row);
    return m[row0 + addr.row][col0 + addr.col / 2 + e.col / 2];
  };
  std::vector<std::vector<double>> s(32, std::vector<double>(kCols / 2, 0.0));
  for (int k0 = 0; k0 < kWindow; k0 += 8) {
    std::vector<std::vector<double>> a(32, std::vector<double>(4));
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < 4; ++r) a[lane][r] = word(q, 0, k0, a_row, lane, r);
    for (int np = 0; np < kCols / 16; ++np) {
      std::vector<std::vector<double>> b0(32, std::vector<double>(2)), b1(32, std::vector<double>(2));
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r) (r < 2 ? b0 : b1)[lane][r % 2] = word(kmat, np * 16, k0, bt_row, lane, r);
      mma_tile_pair(s, np, 8, 4, 2, a, b0, b1, isa_a_tf32, isa_b_tf32);
    }
  }
  const Matrix want_s = product(q, transpose(kmat));
  expect_acc(s, want_s, "TF32 S = Q K^T");
  // O^T = V^T P^T and the row sums l^T = A P^T as the kernel runs them: per k8 step c8,
  // B = S's accumulators of column tile c8 (row tile nr: elements 2 nr, 2 nr + 1), A = V^T
  // from two 8-byte loads of V's rows 8 c8 + 2t, + 1 (features tf32_v_feature(i, g, 0 / 1)).
  const int kOut = 64;
  const double w = 0.5;
  const Matrix v = random_matrix(kCols, kOut, rng);
  std::vector<std::vector<double>> o(32, std::vector<double>(kOut / 2, 0.0)), l(32, std::vector<double>(8, 0.0));
  auto mma_into = [&](std::vector<std::vector<double>>& acc, int at, const std::vector<std::vector<double>>& a,
                      int c8, int nr) {
    std::vector<std::vector<double>> b(32, std::vector<double>(2)), c(32, std::vector<double>(4));
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 2; ++i) b[lane][i] = s[lane][4 * c8 + 2 * nr + i];
      for (int i = 0; i < 4; ++i) c[lane][i] = acc[lane][at + i];
    }
    warp_mma(16, 8, 8, 4, 2, 4, a, b, c, isa_a_tf32, isa_b_tf32, isa_c16);
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) acc[lane][at + i] = c[lane][i];
  };
  for (int c8 = 0; c8 < kCols / 8; ++c8) {
    std::vector<std::vector<double>> ones(32, std::vector<double>(4));
    for (int lane = 0; lane < 32; ++lane) {
      const double one = gid(lane) == 0 ? 1.0 : (gid(lane) == 1 ? w : 0.0);
      for (int r = 0; r < 4; ++r) ones[lane][r] = L::tf32_sums_a(gid(lane), one, r);
    }
    for (int nr = 0; nr < 2; ++nr) mma_into(l, 4 * nr, ones, c8, nr);
    for (int i = 0; i < kOut / 16; ++i) {
      std::vector<std::vector<double>> a(32, std::vector<double>(4));
      for (int lane = 0; lane < 32; ++lane)
        for (int r = 0; r < 4; ++r)
          a[lane][r] = v[8 * c8 + 2 * tig(lane) + r / 2][L::tf32_v_feature(i, gid(lane), r % 2)];
      for (int nr = 0; nr < 2; ++nr) mma_into(o, 8 * i + 4 * nr, a, c8, nr);
    }
  }
  const Matrix want_o = product(want_s, v);
  std::vector<int> seen(16 * kOut, 0);
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < kOut / 2; ++e) {
      const int row = L::tf32_out_row(lane, e), feature = L::tf32_v_feature(e >> 3, gid(lane), (e >> 1) & 1);
      ++seen[row * kOut + feature];
      expect(o[lane][e] == want_o[row][feature], "TF32 O^T = V^T P^T (permuted k)", lane, e);
    }
  for (int count : seen) expect(count == 1, "TF32 O^T: each output once", count);
  int sums = 0;
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 8; ++e) {
      if (e & 2) continue;  // the kernel's finish_sums: rows 8, 9 added into rows 0, 1
      const int col = L::tf32_sum_col(lane, e), row = L::tf32_out_row(lane, e);
      if (col >= 2) continue;
      double want = 0;
      for (int j = 0; j < kCols; ++j) want += want_s[row][j] * (col == 0 ? 1.0 : w);
      expect(l[lane][e] + l[lane][e + 2] == want, "TF32 row sums [l lw] = P [1 w]", lane, e);
      ++sums;
    }
  expect(sums == 32, "TF32 row sums: every row's l and lw once", sums);
  // The 8-byte V loads of one m tile by a half warp hit distinct bank pairs at the pitch.
  const int kPitch = 68;
  for (int i = 0; i < kOut / 16; ++i)
    for (int half = 0; half < 2; ++half) {
      std::vector<int> banks(16, 0);
      for (int lane = 16 * half; lane < 16 * half + 16; ++lane)
        ++banks[((2 * tig(lane) * kPitch + L::tf32_v_feature(i, gid(lane), 0)) / 2) % 16];
      for (int b : banks) expect(b == 1, "TF32 V loads: no bank conflict", i, half);
    }
}

// f64: P V as two k4 steps per column tile, A = accumulator element `half`, V row 2t + half.
void check_f64(std::mt19937& rng) {
  const Matrix p = random_matrix(8, 8, rng), v = random_matrix(8, 8, rng);
  std::vector<std::vector<double>> acc(32, std::vector<double>(2)), o(32, std::vector<double>(2, 0.0));
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 2; ++i) acc[lane][i] = p[L::acc8x8(lane, i).row][L::acc8x8(lane, i).col];
  for (int half = 0; half < 2; ++half) {
    std::vector<std::vector<double>> a(32, std::vector<double>(1)), b(32, std::vector<double>(1));
    for (int lane = 0; lane < 32; ++lane) {
      a[lane][0] = acc[lane][half];
      b[lane][0] = v[2 * tig(lane) + half][gid(lane)];
    }
    warp_mma(8, 8, 4, 1, 1, 2, a, b, o, [](int lane, int) { return isa_a_f64(lane); },
             [](int lane, int) { return isa_b_f64(lane); }, isa_c_f64);
  }
  const Matrix want = product(p, v);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 2; ++i)
      expect(o[lane][i] == want[L::acc8x8(lane, i).row][L::acc8x8(lane, i).col], "f64 O = P V (permuted k)", lane, i);
}

// The kernel's diagonal mask (diagonal_tile, self_pair_key) against the self pairs
// themselves: for a warp's 16 rows starting `offset` columns after the tile's first (a
// multiple of 16), exactly the elements with column - row == offset, 16 of them when the
// rows start inside the tile, none otherwise.
template <class Coord>
void check_diagonal_mask(int cols, int atoms, Coord coord, int elements) {
  for (int offset = -2 * cols; offset <= 2 * cols; offset += 16) {
    int masked_count = 0, self_count = 0;
    const bool diagonal = L::diagonal_tile(offset, cols);
    for (int lane = 0; lane < 32; ++lane)
      for (int atom = 0; atom < atoms; ++atom)
        for (int j = 0; j < cols / 8; ++j)
          for (int i = 0; i < elements; ++i) {
            const RC c = coord(lane, i);
            const int row = 8 * atom + c.row, col = 8 * j + c.col;
            const int key = L::self_pair_key(row - gid(lane), col - 2 * tig(lane));
            const bool masked = diagonal && key != L::kNeverSelf && key == offset + gid(lane) - 2 * tig(lane);
            masked_count += masked;
            self_count += col - row == offset;
            expect(masked == (col - row == offset), "diagonal mask == self pairs", lane, offset);
          }
    expect(self_count == (diagonal ? 16 : 0) && masked_count == self_count, "16 self pairs per diagonal warp tile",
           masked_count, offset);
  }
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  check_layout_functions();
  check_16bit(rng);
  check_tf32(rng);
  check_f64(rng);
  check_diagonal_mask(64, 1, isa_c16, 4);  // bf16, fp16, TF32: 64-column tiles, rows g, g + 8
  check_diagonal_mask(32, 2, isa_c_f64, 2);  // f64: 32 columns, two m8 atoms
  if (failures) {
    std::printf("mma_layout_test: %d failures\n", failures);
    return 1;
  }
  std::printf("mma_layout_test: passed (m16n8k16, m16n8k8 tf32, m8n8k4 f64; ldmatrix, accumulator reuse)\n");
  return 0;
}
