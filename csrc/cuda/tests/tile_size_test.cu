// Host test of the tile-size rule of the CUDA kernels (uniform_block_rows_for): the
// block size each precision runs with for a device's opt-in shared memory per block,
// and the argument checks of launch_uniform_lse that reject other sizes before any
// device work.  Host code only (no kernel launch, no GPU needed); built and run by
// cmake/cuda_kernels.cmake (.ci/cuda_compile_check.sh).
#include "../uniform_kernels.h"

#include <cstdio>

namespace {

using pyhypersphere::cuda::UniformPrecision;
namespace cu = pyhypersphere::cuda;

int failures = 0;

void expect(bool ok, const char* what, long long got) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s (got %lld)\n", what, got);
  }
}

// Opt-in shared memory per block (bytes) of the devices the rule is for.
constexpr long long kH100 = 227 * 1024, kA100 = 163 * 1024, kSm86 = 99 * 1024, kTiny = 48 * 1024;

}  // namespace

int main() {
  const UniformPrecision floats[] = {UniformPrecision::kBf16, UniformPrecision::kFp16,
                                     UniformPrecision::kTf32, UniformPrecision::kFp32};
  for (UniformPrecision p : floats) {
    const long long big = static_cast<long long>(cu::uniform_shared_memory_bytes(p, 128));
    const long long small = static_cast<long long>(cu::uniform_shared_memory_bytes(p, 64));
    expect(cu::uniform_block_rows(p) == 128, "default block of the float kernels", cu::uniform_block_rows(p));
    expect(big > kSm86 && big <= kA100, "128-row tile: over 99 KiB, within A100's 163 KiB", big);
    expect(small <= kSm86, "64-row tile fits in 99 KiB", small);
    expect(cu::uniform_block_rows_for(p, kH100) == 128, "H100: 128 rows", cu::uniform_block_rows_for(p, kH100));
    expect(cu::uniform_block_rows_for(p, kA100) == 128, "A100: 128 rows", cu::uniform_block_rows_for(p, kA100));
    expect(cu::uniform_block_rows_for(p, kSm86) == 64, "sm_86: 64 rows", cu::uniform_block_rows_for(p, kSm86));
    expect(cu::uniform_block_rows_for(p, small - 1) == 0, "too little memory: 0",
           cu::uniform_block_rows_for(p, small - 1));
  }
  const UniformPrecision f64 = UniformPrecision::kFp64;
  const long long f64_bytes = static_cast<long long>(cu::uniform_shared_memory_bytes(f64));
  expect(cu::uniform_block_rows(f64) == 64, "float64 blocks of 64", cu::uniform_block_rows(f64));
  expect(f64_bytes <= kSm86, "float64 tile fits in 99 KiB", f64_bytes);
  expect(cu::uniform_block_rows_for(f64, kSm86) == 64, "sm_86 float64: 64 rows",
         cu::uniform_block_rows_for(f64, kSm86));
  expect(cu::uniform_block_rows_for(f64, kTiny) == 0, "48 KiB float64: 0",
         cu::uniform_block_rows_for(f64, kTiny));

  // Workspace grows with the padded rows: 64-row blocks pad less.
  cu::UniformProblem problem;
  problem.n = 130;
  problem.d = 33;
  problem.compute_grad = true;
  problem.precision = UniformPrecision::kFp32;
  const size_t ws128 = cu::uniform_workspace_bytes(problem);
  problem.block_rows = 64;
  const size_t ws64 = cu::uniform_workspace_bytes(problem);
  expect(ws64 < ws128 && ws64 >= size_t(192) * 64 * 4, "64-row workspace", (long long)ws64);

  // Side groups: private states for the small side of a queue shape, sized by the shape.
  cu::UniformProblem moco;
  moco.n = 256;
  moco.k = 65536;
  moco.d = 128;
  moco.compute_grad = true;
  moco.precision = UniformPrecision::kBf16;
  expect(moco.side_groups == -1, "automatic side groups by default", moco.side_groups);
  moco.side_groups = 0;
  const size_t plain = cu::uniform_workspace_bytes(moco);
  moco.side_groups = 3;  // 3 groups for each of the 2 x blocks: 6 slots of 128 x 128 floats
  const size_t three = cu::uniform_workspace_bytes(moco);
  expect(three >= plain + size_t(6) * 128 * 128 * 4 && three < plain + size_t(7) * 128 * 128 * 4 + 4096,
         "3 side groups: 6 private accumulator blocks", (long long)(three - plain));
  moco.side_groups = -1;  // automatic: 256 chains over 2 x blocks, within 64 MiB
  const size_t automatic = cu::uniform_workspace_bytes(moco);
  expect(automatic >= plain + size_t(256) * 128 * 128 * 4 && automatic <= plain + (size_t(66) << 20),
         "automatic side groups for MoCo's shape", (long long)(automatic - plain));
  moco.d = 4096;  // wide rows: the private accumulators stay within the rows' own
  moco.side_groups = 0;
  const size_t wide_plain = cu::uniform_workspace_bytes(moco);
  moco.side_groups = -1;
  const size_t wide = cu::uniform_workspace_bytes(moco);
  expect(wide > wide_plain && wide - wide_plain <= wide_plain, "automatic side groups within their budget",
         (long long)(wide - wide_plain));
  moco.n = 65536;  // every round 512 tiles wide: no groups
  moco.d = 128;
  const size_t square_auto = cu::uniform_workspace_bytes(moco);
  moco.side_groups = 0;
  expect(square_auto == cu::uniform_workspace_bytes(moco), "no side groups for wide rounds",
         (long long)square_auto);

  // Without the gradient: no side groups, and the tile totals' chains cost a few KiB
  // beyond the padded rows and their norms (2 bytes and 4 per element / row here).
  moco.n = 256;
  moco.compute_grad = false;
  const size_t loss_only = cu::uniform_workspace_bytes(moco);
  const size_t rows_bytes = size_t(256 + 65536) * (128 * 2 + 4);
  expect(loss_only >= rows_bytes && loss_only <= rows_bytes + 32 * 1024,
         "loss alone: the rows and a few KiB of chains", (long long)(loss_only - rows_bytes));
  moco.side_groups = 7;
  expect(cu::uniform_workspace_bytes(moco) == loss_only, "loss alone: side groups ignored",
         (long long)cu::uniform_workspace_bytes(moco));
  moco.products_first_ctas = 5;
  expect(cu::uniform_workspace_bytes(moco) == loss_only, "loss alone: no product staging",
         (long long)cu::uniform_workspace_bytes(moco));

  // Products first: 2 B x ld float accumulators of staging per CTA, with the gradient.
  moco.compute_grad = true;
  moco.products_first_ctas = 0;
  const size_t unstaged = cu::uniform_workspace_bytes(moco);
  moco.products_first_ctas = 5;
  const size_t staged = cu::uniform_workspace_bytes(moco);
  expect(staged >= unstaged + size_t(5) * 2 * 128 * 128 * 4 && staged < unstaged + size_t(5) * 2 * 128 * 128 * 4 + 512,
         "products first: staging for 5 CTAs", (long long)(staged - unstaged));

  // Sizes without a kernel are rejected before any device work.
  char dummy[256];
  double lse = 0;
  problem.block_rows = 32;
  expect(cu::launch_uniform_lse(problem, dummy, &lse, dummy, nullptr) == cudaErrorInvalidValue,
         "32-row blocks rejected", 0);
  problem.block_rows = 64;
  problem.max_ctas = -1;
  expect(cu::launch_uniform_lse(problem, dummy, &lse, dummy, nullptr) == cudaErrorInvalidValue,
         "negative CTA cap rejected", 0);
  problem.max_ctas = 0;
  problem.side_groups = -2;
  expect(cu::launch_uniform_lse(problem, dummy, &lse, dummy, nullptr) == cudaErrorInvalidValue,
         "side groups below -1 rejected", 0);
  int64_t resident = 0;
  expect(cu::uniform_resident_tile_ctas(UniformPrecision::kFp32, 32, true, &resident) == cudaErrorInvalidValue,
         "resident CTAs of a 32-row kernel rejected", resident);
  expect(cu::uniform_resident_tile_ctas(UniformPrecision::kFp32, 0, true, nullptr) == cudaErrorInvalidValue,
         "resident CTAs without an output rejected", 0);
  problem.side_groups = -1;
  problem.products_first_ctas = -1;
  expect(cu::launch_uniform_lse(problem, dummy, &lse, dummy, nullptr) == cudaErrorInvalidValue,
         "negative staging CTAs rejected", 0);

  if (failures) {
    std::printf("tile_size_test: %d failures\n", failures);
    return 1;
  }
  std::printf("tile_size_test: the tile-size rule holds for H100, A100, sm_86 and float64; side groups, chains and staging sized\n");
  return 0;
}
