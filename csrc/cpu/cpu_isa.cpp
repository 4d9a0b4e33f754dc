#include "cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace pyhypersphere {
namespace cpu {
namespace {

Isa detect_isa() {
#ifdef PYHS_X86_DISPATCH
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kBaseline;
}

Isa choose_isa() {
  const Isa detected = detect_isa();
  const char* forced = std::getenv("PYHYPERSPHERE_CPU_ISA");
  if (forced == nullptr) return detected;
  if (std::strcmp(forced, "baseline") == 0) return Isa::kBaseline;
  if (std::strcmp(forced, "avx2") == 0 && detected != Isa::kBaseline) return Isa::kAvx2;
  return detected;
}

}  // namespace

Isa float_loop_isa() {
  static const Isa chosen = choose_isa();
  return chosen;
}

std::string tile_isa() {
  switch (float_loop_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "baseline";
  }
}

}  // namespace cpu
}  // namespace pyhypersphere
