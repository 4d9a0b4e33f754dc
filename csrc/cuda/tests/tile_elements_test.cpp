// Host test of the tile kernel's element mapping (tile_elements.h): every element of a
// B x B tile belongs to exactly one thread, a row's threads are consecutive lanes of one
// warp with one leader (the shuffle row sums), and the column partials' row groups
// cover every row once per column.  Built and run by cmake/cuda_kernels.cmake
// (.ci/cuda_compile_check.sh); no GPU needed.
#include "../tile_elements.h"

#include <cstdio>
#include <vector>

namespace {

int failures = 0;

int current_block = 0;  // the B under test, for the messages

void expect(bool ok, const char* what, int a, int c) {
  if (!ok) {
    ++failures;
    std::printf("FAIL B=%d: %s (%d, %d)\n", current_block, what, a, c);
  }
}

template <int B, int kThreads>
void check() {
  using E = pyhypersphere::cuda::TileElements<B, kThreads>;
  current_block = B;
  std::vector<int> owner(B * B, -1);
  std::vector<int> leaders(B, 0);
  std::vector<int> row_warp(B, -1);
  for (int t = 0; t < kThreads; ++t) {
    expect(E::col0(t) % E::kCols == 0 && E::col0(t) + E::kCols <= B, "column group in the tile", t, E::col0(t));
    expect(E::row_group(t) < E::kRowsPerPass, "row group in range", t, E::row_group(t));
    for (int k = 0; k < E::kRowsPerThread; ++k) {
      const int i = E::row(t, k);
      expect(i >= 0 && i < B, "row in the tile", t, i);
      if (i < 0 || i >= B) continue;
      if (E::row_leader(t)) ++leaders[i];
      const int warp = t / 32;
      expect(row_warp[i] == -1 || row_warp[i] == warp, "a row's lanes in one warp", i, warp);
      row_warp[i] = warp;
      for (int c = 0; c < E::kCols; ++c) {
        const int j = E::col0(t) + c;
        expect(owner[i * B + j] == -1, "element owned once", i, j);
        owner[i * B + j] = t;
      }
    }
  }
  for (int e = 0; e < B * B; ++e) expect(owner[e] != -1, "element owned", e / B, e % B);
  for (int i = 0; i < B; ++i) expect(leaders[i] == 1, "one leader per row", i, leaders[i]);
  // A row's threads are kLanesPerRow consecutive lanes starting at a multiple of it (the
  // xor shuffles with offsets below kLanesPerRow stay inside the row).
  for (int i = 0; i < B; ++i) {
    int first = -1, count = 0;
    for (int t = 0; t < kThreads; ++t) {
      bool has = false;
      for (int k = 0; k < E::kRowsPerThread; ++k) has = has || E::row(t, k) == i;
      if (has) {
        if (first == -1) first = t;
        expect(t == first + count, "a row's lanes consecutive", i, t);
        ++count;
      }
    }
    expect(count == E::kLanesPerRow && first % E::kLanesPerRow == 0, "a row's lane group", i, first);
  }
}

}  // namespace

int main() {
  check<128, 256>();  // the float and 16-bit tiles
  check<64, 256>();   // float64, and every precision on 99 KiB devices
  if (failures) {
    std::printf("tile_elements_test: %d failure(s)\n", failures);
    return 1;
  }
  std::printf("tile_elements_test: ok\n");
  return 0;
}
