// Host test of the row-block algorithm's arithmetic (rowblock_plan.h), no GPU:
//   1. parts: every pair in exactly one part, seen alike from x's rows and the queue's;
//   2. pass plans: the splits cover every column tile once, none empty; work items and
//      feature windows (each once, the output's own last);
//   3. the whole algorithm emulated on the host with the kernel's own functions (exponent,
//      online step or static shift, column splits and their merge, lse, the gradient's
//      closed form), products in scalar float (double for the float64 kernel), against a
//      float64 reference: values and gradients for x and the queue, parts, far-apart rows.
// Built and run by .ci/cuda_compile_check.sh.
#include "../rowblock_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

namespace P = pyhypersphere::cuda::plan;

int failures = 0;
void expect(bool ok, const char* what, double a = 0, double b = 0) {
  if (!ok && ++failures <= 20) std::printf("FAIL %s (%g, %g)\n", what, a, b);
}

void check_parts() {
  for (int64_t n : {1, 64, 130, 300}) {
    for (int64_t k : {0, 63, 200}) {
      for (bool intra : {true, false}) {
        if (!intra && k == 0) continue;
        for (int64_t parts : {1, 2, 3, 7}) {
          std::vector<P::Parts> all;
          for (int64_t p = 0; p < parts; ++p) all.push_back(P::make_parts(n, k, intra, p, parts));
          auto owners = [&](bool rows_x, bool cols_x, int64_t i, int64_t j) {
            int count = 0;
            for (const P::Parts& p : all) count += P::part_holds(p, rows_x, cols_x, i / P::kPartRows, j / P::kPartRows);
            return count;
          };
          // The held column blocks of each row block are one range per region.
          const int64_t xb = P::ceil_div(n, 64), qb = P::ceil_div(k, 64);
          for (const P::Parts& p : all) {
            for (int64_t a = 0; a < xb; ++a) {
              const P::BlockRange rx = P::held_blocks(p, true, true, a, xb), rq = P::held_blocks(p, true, false, a, qb);
              for (int64_t b = 0; b < xb && intra; ++b)
                expect(rx.holds(b) == P::part_holds(p, true, true, a, b), "x range == part_holds", double(a), double(b));
              for (int64_t b = 0; b < qb; ++b)
                expect(rq.holds(b) == P::part_holds(p, true, false, a, b), "queue range == part_holds", double(a), double(b));
            }
            for (int64_t a = 0; a < qb; ++a) {
              const P::BlockRange r = P::held_blocks(p, false, true, a, xb);
              for (int64_t b = 0; b < xb; ++b)
                expect(r.holds(b) == P::part_holds(p, false, true, a, b), "queue pass range == part_holds", double(a), double(b));
            }
          }
          for (int64_t i = 0; i < n; i += 7) {
            if (intra)
              for (int64_t j = i + 1; j < n; j += 5) {
                expect(owners(true, true, i, j) == 1, "x-x pair in one part", double(i), double(j));
                expect(owners(true, true, j, i) == 1, "x-x pair seen from its other row", double(i), double(j));
                for (const P::Parts& p : all)
                  expect(P::part_holds(p, true, true, i / 64, j / 64) == P::part_holds(p, true, true, j / 64, i / 64),
                         "both rows of an x-x pair agree", double(i), double(j));
              }
            for (int64_t q = 0; q < k; q += 3) {
              expect(owners(true, false, i, q) == 1, "x-queue pair in one part", double(i), double(q));
              for (const P::Parts& p : all)
                expect(P::part_holds(p, true, false, i / 64, q / 64) == P::part_holds(p, false, true, q / 64, i / 64),
                       "queue pass sees the x pass's part", double(i), double(q));
            }
          }
        }
      }
    }
  }
}

void check_pass_plans() {
  for (int64_t row_blocks : {0, 1, 2, 3, 512}) {
    for (int64_t tiles : {0, 1, 4, 5, 1024, 1025}) {
      for (int64_t slices : {1, 2}) {
        const P::PassPlan plan = P::make_pass_plan(row_blocks, tiles, slices);
        std::vector<int> seen(static_cast<size_t>(std::max<int64_t>(tiles, 1)) * row_blocks * slices, 0);
        for (int64_t item = 0; item < plan.items(); ++item) {
          const P::WorkItem w = P::work_item(plan, item);
          expect(tiles == 0 || w.end_tile > w.first_tile, "no empty split", double(row_blocks), double(tiles));
          for (int64_t t = w.first_tile; t < w.end_tile; ++t) ++seen[(w.row_block * slices + w.slice) * tiles + t];
        }
        for (int64_t i = 0; i < tiles * row_blocks * slices; ++i) expect(seen[i] == 1, "each tile once", double(i));
        expect(plan.items() <= std::max<int64_t>(P::kTargetItems, row_blocks * slices) + row_blocks * slices,
               "about the target items", double(plan.items()));
      }
    }
  }
  for (int64_t windows : {1, 2, 5}) {
    for (int64_t slice = 0; slice < windows; ++slice) {
      std::vector<int> seen(windows, 0);
      for (int64_t step = 0; step < windows; ++step) ++seen[P::window_at(slice, step, windows)];
      for (int64_t w = 0; w < windows; ++w) expect(seen[w] == 1, "each window once", double(w));
      expect(P::window_at(slice, windows - 1, windows) == slice, "the output's window last", double(slice));
    }
  }
}

// ---------------------------------------------------------------- emulation

struct Result {
  double lse;
  std::vector<double> grad;  // [(n + k) * d]
};

// The kernels' algorithm with scalar products in T: x's rows against x's columns
// (intra) and the queue's, then the queue's rows against x's; column tiles of kCols,
// `splits` column ranges merged afterwards, parts as the kernel selects them.
template <class T>
Result emulate(const std::vector<double>& z, int64_t n, int64_t k, int64_t d, double t, bool intra, int64_t part,
               int64_t parts, bool online, int64_t splits) {
  const int64_t kCols = 64;
  const P::Parts sel = P::make_parts(n, k, intra, part, parts);
  const T c1 = T(t * P::kLog2E), c2 = T(2 * t * P::kLog2E);
  std::vector<T> sq(n + k, T(0));
  for (int64_t i = 0; i < n + k; ++i)
    for (int64_t c = 0; c < d; ++c) sq[i] += T(z[i * d + c]) * T(z[i * d + c]);
  struct Partial {
    T m2, l, lw;
    std::vector<T> a;
  };
  // One row against columns [c_begin, c_end) of the stacked rows (all x's or all the queue's).
  auto sweep = [&](int64_t i, bool row_x, int64_t c_begin, int64_t c_end, bool cols_x, Partial& p) {
    for (int64_t c0 = c_begin; c0 < c_end; c0 += kCols) {
      const int64_t seg0 = cols_x ? 0 : n;
      if (!P::part_holds(sel, row_x, cols_x, (row_x ? i : i - n) / P::kPartRows, (c0 - seg0) / P::kPartRows)) continue;
      std::vector<T> e;
      for (int64_t j = c0; j < std::min(c0 + kCols, c_end); ++j) {
        T g = 0;
        for (int64_t c = 0; c < d; ++c) g += T(z[i * d + c]) * T(z[j * d + c]);
        e.push_back(j == i ? -std::numeric_limits<T>::infinity() : P::partial_exponent2(c2, g, -c1 * sq[j]));
      }
      const T row_term = -c1 * sq[i];
      T bias = P::weight_bias(row_term, T(0)), scale = 1;
      if (online) {  // the kernel's lazy shift: it moves only past kLazyShift2
        const T tile_max = *std::max_element(e.begin(), e.end());
        // The kernel skips the max once the shift is settled: it could not move it.
        const bool moves = tile_max > P::shift_limit(p.m2, row_term);
        expect(!moves || P::needs_exact_max(p.m2), "a settled shift never moves", double(p.m2));
        if (moves && P::needs_exact_max(p.m2)) {
          const P::OnlineStep<T> s = P::online_step(p.m2, tile_max + row_term);
          p.m2 = s.max;
          scale = s.scale;
        }
        bias = P::weight_bias(row_term, P::shift_of(p.m2));
      }
      const T half = row_x && cols_x ? T(0.5) : T(1);
      p.l *= scale;
      p.lw *= scale;
      for (T& v : p.a) v *= scale;
      for (size_t jj = 0; jj < e.size(); ++jj) {
        const T w = std::exp2(e[jj] + bias);
        p.l += w;
        p.lw += half * w;
        for (int64_t c = 0; c < d; ++c) p.a[c] += w * T(z[(c0 + int64_t(jj)) * d + c]);
      }
    }
  };
  // Each row's column tiles cut into `splits` ranges of whole tiles.
  auto row_partials = [&](int64_t i, bool row_x) {
    std::vector<std::pair<int64_t, int64_t>> segments;  // tiles as (first column, end)
    if (row_x && intra)
      for (int64_t c = 0; c < n; c += kCols) segments.push_back({c, std::min(c + kCols, n)});
    if (row_x)
      for (int64_t c = n; c < n + k; c += kCols) segments.push_back({c, std::min(c + kCols, n + k)});
    else
      for (int64_t c = 0; c < n; c += kCols) segments.push_back({c, std::min(c + kCols, n)});
    const P::PassPlan plan = P::make_pass_plan(1, int64_t(segments.size()), 1);
    const int64_t use = std::min<int64_t>(splits, std::max<int64_t>(plan.col_tiles, 1));
    const P::PassPlan forced = [&] {
      P::PassPlan f = plan;
      f.tiles_per_split = plan.col_tiles ? P::ceil_div(plan.col_tiles, use) : 0;
      f.splits = plan.col_tiles ? P::ceil_div(plan.col_tiles, f.tiles_per_split) : 1;
      return f;
    }();
    std::vector<Partial> out;
    for (int64_t s = 0; s < forced.splits; ++s) {
      const P::WorkItem w = P::work_item(forced, s);
      Partial p{online ? -std::numeric_limits<T>::infinity() : T(0), 0, 0, std::vector<T>(d, T(0))};
      for (int64_t tt = w.first_tile; tt < w.end_tile; ++tt) {
        const bool cols_x = segments[tt].first < n;
        sweep(i, row_x, segments[tt].first, segments[tt].second, cols_x, p);
      }
      out.push_back(p);
    }
    return out;
  };
  std::vector<std::vector<Partial>> xs(n), qs(k);
  for (int64_t i = 0; i < n; ++i) xs[i] = row_partials(i, true);
  for (int64_t q = 0; q < k; ++q) qs[q] = row_partials(n + q, false);
  // lse from x's partials, as lse_kernel.
  double top = -INFINITY, total = 0;
  for (const auto& row : xs)
    for (const Partial& p : row) top = std::max(top, double(p.m2));
  for (const auto& row : xs)
    for (const Partial& p : row) total += double(p.lw) * P::rescale2(double(p.m2), top);
  const double lse2 = total > 0 ? top + std::log2(total) : -INFINITY;
  Result r{lse2 * P::kLn2, std::vector<double>((n + k) * d)};
  // The gradient, as gradient_kernel: splits merged in order under their largest shift.
  auto gradient = [&](const std::vector<Partial>& ps, int64_t row) {
    T m = -std::numeric_limits<T>::infinity();
    for (const Partial& p : ps) m = std::max(m, p.m2);
    T l = 0;
    std::vector<T> a(d, T(0));
    for (const Partial& p : ps) {
      const T f = P::rescale2(p.m2, m);
      l += p.l * f;
      for (int64_t c = 0; c < d; ++c) a[c] += p.a[c] * f;
    }
    const T coefficient = T(P::gradient_coefficient(t, double(m), lse2));
    for (int64_t c = 0; c < d; ++c) r.grad[row * d + c] = double(coefficient * (l * T(z[row * d + c]) - a[c]));
  };
  for (int64_t i = 0; i < n; ++i) gradient(xs[i], i);
  for (int64_t q = 0; q < k; ++q) gradient(qs[q], n + q);
  return r;
}

// float64 reference over the pairs of the part (the same part selection), direct form.
Result reference(const std::vector<double>& z, int64_t n, int64_t k, int64_t d, double t, bool intra, int64_t part,
                 int64_t parts) {
  const P::Parts sel = P::make_parts(n, k, intra, part, parts);
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t i = 0; i < n; ++i) {
    if (intra)
      for (int64_t j = i + 1; j < n; ++j)
        if (P::part_holds(sel, true, true, i / 64, j / 64)) pairs.push_back({i, j});
    for (int64_t q = 0; q < k; ++q)
      if (P::part_holds(sel, true, false, i / 64, q / 64)) pairs.push_back({i, n + q});
  }
  auto expo = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t c = 0; c < d; ++c) s += (z[i * d + c] - z[j * d + c]) * (z[i * d + c] - z[j * d + c]);
    return -t * s;
  };
  double m = -INFINITY;
  for (auto [i, j] : pairs) m = std::max(m, expo(i, j));
  double total = 0;
  Result r{0, std::vector<double>((n + k) * d, 0.0)};
  for (auto [i, j] : pairs) {
    const double w = std::exp(expo(i, j) - m);
    total += w;
    for (int64_t c = 0; c < d; ++c) {
      const double diff = z[i * d + c] - z[j * d + c];
      r.grad[i * d + c] += -2 * t * w * diff;
      r.grad[j * d + c] -= -2 * t * w * diff;
    }
  }
  r.lse = pairs.empty() ? -INFINITY : m + std::log(total);
  for (double& g : r.grad) g = pairs.empty() ? 0.0 : g / total;
  return r;
}

std::vector<double> rows(int64_t count, int64_t d, double scale, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> z(count * d);
  for (double& v : z) v = scale * normal(rng);
  return z;
}

template <class T>
void compare(const char* what, const std::vector<double>& z, int64_t n, int64_t k, int64_t d, double t, bool intra,
             int64_t part, int64_t parts, bool online, int64_t splits, double tol) {
  const Result got = emulate<T>(z, n, k, d, t, intra, part, parts, online, splits);
  const Result want = reference(z, n, k, d, t, intra, part, parts);
  if (std::isinf(want.lse)) {
    expect(std::isinf(got.lse) && got.lse < 0, what, got.lse, want.lse);
  } else {
    expect(std::abs(got.lse - want.lse) <= tol * std::max(1.0, std::abs(want.lse)), what, got.lse, want.lse);
  }
  double scale = 0, err = 0;
  for (size_t i = 0; i < want.grad.size(); ++i) {
    scale = std::max(scale, std::abs(want.grad[i]));
    err = std::max(err, std::abs(got.grad[i] - want.grad[i]));
    if (!std::isfinite(got.grad[i])) err = INFINITY;
  }
  expect(err <= tol * std::max(scale, 1e-300) || (scale == 0 && err == 0), what, err, scale);
}

void check_algorithm() {
  struct Case {
    int64_t n, k, d;
    bool intra;
    double t, scale;
  };
  const Case cases[] = {{130, 0, 5, true, 2.0, 0.3}, {70, 140, 3, true, 2.0, 0.3}, {65, 200, 4, false, 1.0, 0.5},
                        {1, 70, 2, true, 2.0, 0.4},  {3, 0, 1, true, 2.0, 1.0}};
  for (const Case& c : cases) {
    const std::vector<double> z = rows(c.n + c.k, c.d, c.scale, unsigned(c.n * 31 + c.k));
    for (bool online : {true, false}) {
      for (int64_t splits : {1, 2, 3}) {
        for (int64_t parts : {1, 3}) {
          for (int64_t part = 0; part < parts; ++part) {
            compare<float>("float emulation vs float64", z, c.n, c.k, c.d, c.t, c.intra, part, parts, online, splits, 2e-4);
            if (splits == 2) {
              compare<double>("double emulation vs float64", z, c.n, c.k, c.d, c.t, c.intra, part, parts, online,
                              splits, 1e-11);
            }
          }
        }
      }
    }
  }
  // Far apart (t ||z_i - z_j||^2 ~ 2000): every weight underflows under the static shift,
  // which is not certified there; the online max keeps lse and the gradient.
  const std::vector<double> far = rows(90, 3, 3.0, 5u);
  double max_sq = 0;
  for (int i = 0; i < 90; ++i) max_sq = std::max(max_sq, far[i * 3] * far[i * 3] + far[i * 3 + 1] * far[i * 3 + 1] + far[i * 3 + 2] * far[i * 3 + 2]);
  expect(!P::static_shift_certified(50.0, max_sq, false), "far rows: static shift not certified", max_sq);
  compare<float>("far rows, online max", far, 60, 30, 3, 50.0, true, 0, 1, true, 2, 2e-3);
  // Sorted points on a line: a row's max grows from tile to tile by about 11 (spacing
  // 0.03: the rescale keeps what is held) or by hundreds (0.3: past float's range, so the
  // shift must move), both through the lazy shift's moves.  Centered; the gradient
  // (l z - a) cancels to ~1e-3 of l z, hence the float tolerance.
  for (double spacing : {0.03, 0.3}) {
    std::vector<double> line(230);
    for (size_t j = 0; j < line.size(); ++j) line[j] = spacing * (double(j) - 115.0);
    for (int64_t splits : {1, 2}) {
      compare<float>("sorted points, online max", line, 200, 30, 1, 2.0, true, 0, 1, true, splits, 2e-3);
    }
  }
  // And the certificate holds where it says so: unit-scale rows at t = 2.
  expect(P::static_shift_certified(2.0, 1.0, false), "unit rows at t = 2: certified");
  expect(!P::static_shift_certified(2.0, 20.0, false) && P::static_shift_certified(2.0, 20.0, true),
         "float64 accumulation certifies more");
}

}  // namespace

int main() {
  check_parts();
  check_pass_plans();
  check_algorithm();
  if (failures) {
    std::printf("rowblock_plan_test: %d failures\n", failures);
    return 1;
  }
  std::printf("rowblock_plan_test: passed (parts, splits, windows, host emulation vs float64)\n");
  return 0;
}
