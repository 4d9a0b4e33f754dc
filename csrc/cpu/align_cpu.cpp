// CPU alignment loss: one pass over the rows, no (x - y) temporary.
#include "../input_checks.h"
#include "../ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace pyhypersphere {

AlignResult align_loss_cpu(const at::Tensor& x, const at::Tensor& y, double alpha,
                           bool compute_grad) {
  check_align_args(x, y, alpha);
  const at::Tensor xc = x.contiguous();
  const at::Tensor yc = y.contiguous();
  const int64_t n = x.size(0), d = x.size(1);
  at::Tensor grad = compute_grad ? at::empty_like(xc) : x.new_empty({0});
  // Per-row terms summed afterwards in a fixed order: the same result for any thread count.
  std::vector<double> terms(n);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "align_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* px = xc.data_ptr<scalar_t>();
    const scalar_t* py = yc.data_ptr<scalar_t>();
    scalar_t* pg = compute_grad ? grad.data_ptr<scalar_t>() : nullptr;
    const acc_t a = static_cast<acc_t>(alpha);
    at::parallel_for(0, n, 256, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        acc_t sq = 0;
        for (int64_t c = 0; c < d; ++c) {
          const acc_t diff = acc_t(px[i * d + c]) - acc_t(py[i * d + c]);
          sq += diff * diff;
        }
        const acc_t norm = std::sqrt(sq);
        terms[i] = static_cast<double>(std::pow(norm, a));
        if (pg != nullptr) {
          // d ||v||^a / dv = a ||v||^(a-2) v; taken as 0 at v = 0 (the subgradient for
          // a >= 1; for a < 1 the derivative is unbounded there and 0 is the convention).
          const acc_t coef = sq > 0 ? a * std::pow(norm, a - 2) / acc_t(n) : acc_t(0);
          for (int64_t c = 0; c < d; ++c) {
            pg[i * d + c] =
                static_cast<scalar_t>(coef * (acc_t(px[i * d + c]) - acc_t(py[i * d + c])));
          }
        }
      }
    });
  });
  double sum = 0;
  for (double v : terms) sum += v;
  at::Tensor loss = at::scalar_tensor(sum / double(n), x.options());
  return {loss, grad};
}

TORCH_LIBRARY_IMPL(pyhypersphere, CPU, m) { m.impl("align_loss", &align_loss_cpu); }

}  // namespace pyhypersphere
