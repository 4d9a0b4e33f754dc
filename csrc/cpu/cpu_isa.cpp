#include "cpu_isa.h"

#include <c10/util/Exception.h>

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

// PYHYPERSPHERE_CPU_ISA=baseline|avx2 caps the ISA below what the CPU supports, so the
// tests can run every variant of the float loops on one machine.  Read once per process;
// any other non-empty value is an error (a typo must not silently test the default),
// raised by every call since a throwing static initializer is retried.
Isa choose_isa() {
  const Isa detected = detect_isa();
  const char* forced = std::getenv("PYHYPERSPHERE_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return detected;
  TORCH_CHECK_VALUE(std::strcmp(forced, "baseline") == 0 || std::strcmp(forced, "avx2") == 0,
                    "PYHYPERSPHERE_CPU_ISA=", forced, " is not a valid value: expected baseline "
                    "or avx2 (or unset for the best the CPU supports)");
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
