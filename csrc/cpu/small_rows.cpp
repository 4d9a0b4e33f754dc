#include "small_rows.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace pyhypersphere {
namespace cpu {
namespace {

constexpr int64_t kLanes = 8;  // independent partial sums: no add-latency chain per element

// sum_c v[c]^2 in double, in kLanes interleaved partial sums.
template <typename T>
double sum_of_squares(const T* v, int64_t d) {
  double part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += double(v[c + l]) * double(v[c + l]);
  }
  for (; c < d; ++c) part[0] += double(v[c]) * double(v[c]);
  double total = 0;
  for (double p : part) total += p;
  return total;
}

// True when every v[c] is finite: v - v is 0 for those, NaN for NaN and +-inf.
template <typename T>
bool all_finite(const T* v, int64_t d) {
  T part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= d; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) part[l] += v[c + l] - v[c + l];
  }
  for (; c < d; ++c) part[0] += v[c] - v[c];
  T total = 0;
  for (T p : part) total += p;
  return total == T(0);
}

// Sums in double; z rounded to acc_t once, as the general path's conversion does.  Each
// pass over a row is a loop of its own, so that the compiler vectorizes it.
template <typename in_t, typename acc_t>
void fill_rows(const in_t* x, const in_t* q, int64_t n, int64_t k, int64_t d, bool intra_batch,
               bool input_norms, UniformRows& rows) {
  const int64_t total = n + k;
  acc_t* z = rows.z.data_ptr<acc_t>();
  acc_t* sq = rows.sq_norm.data_ptr<acc_t>();
  std::vector<double> mean(d, 0.0), mean_x(d, 0.0);
  bool finite = true;
  double max_input = 0;
  for (int64_t r = 0; r < total; ++r) {
    const in_t* src = r < n ? x + r * d : q + (r - n) * d;
    acc_t* row = z + r * d;
    for (int64_t c = 0; c < d; ++c) row[c] = static_cast<acc_t>(src[c]);
    for (int64_t c = 0; c < d; ++c) mean[c] += double(row[c]);
    finite = finite && all_finite(row, d);
    if (input_norms) max_input = std::max(max_input, sum_of_squares(row, d));
  }
  rows.finite = finite;
  rows.finite_on_device = at::scalar_tensor(finite, at::kBool);
  if (!finite) return;
  for (double& m : mean) m /= double(total);
  double max_sq = 0, s_x = 0, s_q = 0;
  for (int64_t r = 0; r < total; ++r) {
    acc_t* row = z + r * d;
    for (int64_t c = 0; c < d; ++c) row[c] = static_cast<acc_t>(double(row[c]) - mean[c]);
    if (r < n) {
      for (int64_t c = 0; c < d; ++c) mean_x[c] += double(row[c]);
    }
    sq[r] = static_cast<acc_t>(sum_of_squares(row, d));
    max_sq = std::max(max_sq, double(sq[r]));
    (r < n ? s_x : s_q) += double(sq[r]);
  }
  double m_x2 = 0;
  for (double m : mean_x) m_x2 += (m / double(n)) * (m / double(n));
  rows.max_sq_norm = max_sq;
  rows.max_input_sq_norm = input_norms ? max_input : 0;
  rows.mean_pair_sq_distance = mean_pair_sq_distance_from_sums(n, k, intra_batch, s_x, s_q, m_x2);
}

}  // namespace

bool small_rows_apply(const at::Tensor& x, const std::optional<at::Tensor>& queue) {
  const bool has_queue = queue.has_value() && queue->defined();
  const int64_t rows = x.size(0) + (has_queue ? queue->size(0) : 0);
  return x.device().is_cpu() && rows * x.size(1) <= kSmallRowsElements;
}

UniformRows prepare_small_rows(const at::Tensor& x, const std::optional<at::Tensor>& queue,
                               bool intra_batch, at::ScalarType acc, bool input_norms) {
  const bool has_queue = queue.has_value() && queue->defined();
  const at::Tensor xc = x.contiguous();
  const at::Tensor qc = has_queue ? queue->contiguous() : at::Tensor();
  UniformRows rows;
  rows.n = x.size(0);
  rows.k = has_queue ? queue->size(0) : 0;
  const int64_t d = x.size(1);
  rows.z = at::empty({rows.n + rows.k, d}, x.options().dtype(acc));
  rows.sq_norm = at::empty({rows.n + rows.k}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "prepare_small_rows", [&] {
    const scalar_t* q = has_queue ? qc.data_ptr<scalar_t>() : nullptr;
    if (acc == at::kDouble) {
      fill_rows<scalar_t, double>(xc.data_ptr<scalar_t>(), q, rows.n, rows.k, d, intra_batch,
                                  input_norms, rows);
    } else {
      fill_rows<scalar_t, float>(xc.data_ptr<scalar_t>(), q, rows.n, rows.k, d, intra_batch,
                                 input_norms, rows);
    }
  });
  return rows;
}

}  // namespace cpu
}  // namespace pyhypersphere
