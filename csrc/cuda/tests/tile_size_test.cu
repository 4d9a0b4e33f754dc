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
    expect(big > kSm86 && big <= kA100, "128-row block: over 99 KiB, within A100's 163 KiB", big);
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
  problem.grad_x = true;
  problem.precision = UniformPrecision::kFp32;
  const size_t ws128 = cu::uniform_workspace_bytes(problem);
  problem.block_rows = 64;
  const size_t ws64 = cu::uniform_workspace_bytes(problem);
  expect(ws64 < ws128 && ws64 >= size_t(192) * 64 * 4, "64-row workspace", (long long)ws64);

  // MoCo's shape: the x pass's column splits keep their partial sums within the rows'
  // own size; the loss alone needs the rows and a few values per row and split.
  cu::UniformProblem moco;
  moco.n = 256;
  moco.k = 65536;
  moco.d = 128;
  moco.precision = UniformPrecision::kBf16;
  const size_t rows_bytes = size_t(256 + 65536) * (128 * 2 + 4);
  const size_t loss_only = cu::uniform_workspace_bytes(moco);
  expect(loss_only >= rows_bytes && loss_only <= rows_bytes + (size_t(1) << 20), "loss alone: the rows",
         (long long)(loss_only - rows_bytes));
  moco.grad_x = true;
  const size_t with_grad = cu::uniform_workspace_bytes(moco);
  expect(with_grad > loss_only && with_grad - loss_only <= rows_bytes * 2, "x's gradient: split partials bounded",
         (long long)(with_grad - loss_only));
  moco.grad_queue = true;  // + one partial row per queue row (x has 4 column tiles: no split)
  const size_t both = cu::uniform_workspace_bytes(moco);
  expect(both >= with_grad + size_t(65536) * 128 * 4 && both <= with_grad + size_t(65536) * (128 * 4 + 16) + 4096,
         "the queue's gradient: one partial row per queue row", (long long)(both - with_grad));

  // Sizes and arguments without a kernel are rejected before any device work.
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
  problem.grad_queue = true;  // and no queue
  expect(cu::launch_uniform_lse(problem, dummy, &lse, dummy, nullptr) == cudaErrorInvalidValue,
         "the queue's gradient without a queue rejected", 0);
  problem.grad_queue = false;
  expect(cu::launch_uniform_lse(problem, dummy, &lse, nullptr, nullptr) == cudaErrorInvalidValue,
         "a gradient without its output rejected", 0);

  if (failures) {
    std::printf("tile_size_test: %d failures\n", failures);
    return 1;
  }
  std::printf("tile_size_test: the block-size rule holds for H100, A100, sm_86 and float64; workspaces sized\n");
  return 0;
}
