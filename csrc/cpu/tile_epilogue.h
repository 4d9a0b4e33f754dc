// The element-wise part of a CPU tile: from the Gram tile to pair weights.
//
// The tile holds g_ij = <z_i, z_j> for rows i of block a and j of block b, and
// e_ij = -t ||z_i - z_j||^2 is the pair's exponent (self pairs i == j of a diagonal tile
// are excluded everywhere).
//   tile_max_exponent: max_ij e_ij, reading the tile only.
//   tile_weights:      g_ij <- w_ij = exp(e_ij - shift) in one pass, adding row sums into
//                      row_sum[i] and, when col_sum is given, column sums into col_sum[j];
//                      returns max_ij e_ij.  Self pairs get weight 0.
// The CPU kernel shifts each tile by its own max exponent, so every weight is in (0, 1]
// and a tile's result depends on no other tile (see block_turns.h for why that matters).
// The float versions use a vectorizable exp and are compiled for several x86 ISAs,
// picked at run time; the double versions use std::exp (accuracy first).
#pragma once

#include "cpu_isa.h"

#include <cstdint>

namespace pyhypersphere {
namespace cpu {

float tile_max_exponent(const float* tile, int64_t rows, int64_t cols, int64_t ld,
                        const float* sq_a, const float* sq_b, float t, bool diagonal);
double tile_max_exponent(const double* tile, int64_t rows, int64_t cols, int64_t ld,
                         const double* sq_a, const double* sq_b, double t, bool diagonal);

float tile_weights(float* tile, int64_t rows, int64_t cols, int64_t ld, const float* sq_a,
                   const float* sq_b, float t, float shift, float* row_sum, float* col_sum,
                   bool diagonal);
double tile_weights(double* tile, int64_t rows, int64_t cols, int64_t ld, const double* sq_a,
                    const double* sq_b, double t, double shift, double* row_sum,
                    double* col_sum, bool diagonal);

// exp(x) in float for x <= 88, the polynomial the float tile_weights use; exposed so a
// test can hold it to std::exp.
float exp_fast(float x);

}  // namespace cpu
}  // namespace pyhypersphere
