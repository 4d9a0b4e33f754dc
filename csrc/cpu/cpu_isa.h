// Which x86 instruction set the CPU epilogues' float loops run with.
//
// The extension is built for baseline x86-64, but the exp loops are worth AVX2+FMA or
// AVX-512 where present, so each epilogue compiles its float loops once per level
// (PYHS_TARGET_AVX2 / PYHS_TARGET_AVX512) and dispatches on float_loop_isa().  (Not
// target_clones: its "arch=" clones test the CPU model, not its features, and miss
// newer CPUs.)
#pragma once

#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#define PYHS_X86_DISPATCH 1
#define PYHS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define PYHS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#endif

namespace pyhypersphere {
namespace cpu {

enum class Isa { kBaseline, kAvx2, kAvx512 };

// The best level the CPU supports, capped by PYHYPERSPHERE_CPU_ISA=baseline|avx2 (so the
// tests can run every variant on one machine).  Read once per process.
Isa float_loop_isa();

// "avx512", "avx2" or "baseline".
std::string tile_isa();

}  // namespace cpu
}  // namespace pyhypersphere
