// Holds the CUDA kernel's turn rule (csrc/cuda/tile_states.h) to a brute-force scan: for
// every tile of every part, each state the tile updates must wait for exactly the last
// earlier tile of the part that updated the same state (so each state sees its updates in
// the schedule order and no wait is on a tile that never publishes that state), and the
// states must be the right ones: the tile's blocks, the small side's group slot for its
// block and residue (merged back into that block), or the chain of the tile's position.  Shapes: 1-6 x blocks, 0-9
// queue blocks, with and without pairs within x, 1-3 parts, with the gradient (no side
// groups, 2, 3, 5, all) and without (chains of 1, 2, 7 and the launcher's count).
// Host only; built and run by cmake/cuda_kernels.cmake (.ci/cuda_compile_check.sh).
#include "../tile_states.h"

#include <algorithm>
#include <cstdio>
#include <map>

namespace {

using pyhypersphere::cuda::StateLayout;
using pyhypersphere::cuda::TileOrder;
using pyhypersphere::cuda::TileState;
using pyhypersphere::cuda::TileStates;

int failures = 0;
long long checked = 0;

void fail(const char* what, int64_t x, int64_t q, bool intra, int64_t parts, const StateLayout& l, int64_t f,
          long long got, long long want) {
  if (++failures <= 20) {
    std::printf("FAIL %s: x_blocks=%lld queue_blocks=%lld intra=%d parts=%lld grad=%d groups=%lld chains=%lld "
                "f=%lld: got %lld, want %lld\n",
                what, (long long)x, (long long)q, (int)intra, (long long)parts, (int)l.grad, (long long)l.groups,
                (long long)l.total_chains, (long long)f, got, want);
  }
}

// Every tile of one part: the waits against the last updater of each state, by scan.
void check_part(const TileOrder& order, int64_t x, int64_t q, bool intra, int64_t parts, const StateLayout& l,
                int64_t end) {
  const int64_t blocks = x + q;
  const int64_t slots = !l.grad ? l.total_chains : blocks + order.small_blocks() * l.groups;
  std::map<int64_t, int64_t> last;  // slot -> the last tile of this part that updated it
  auto check_state = [&](const char* side, const TileState& state, int64_t f) {
    if (state.slot < 0 || state.slot >= slots) fail(side, x, q, intra, parts, l, f, state.slot, slots);
    const auto it = last.find(state.slot);
    const int64_t want = it == last.end() ? -1 : it->second;
    const int64_t got = pyhypersphere::cuda::tile_to_wait_for(order, l, state, f);
    if (got != want) fail("wait", x, q, intra, parts, l, f, got, want);
    ++checked;
  };
  for (int64_t f = l.begin; f < end; ++f) {
    const auto tile = order.tile(f);
    const TileStates s = tile_states(order, l, f, tile);
    check_state("slot a", s.a, f);
    if (s.two) check_state("slot b", s.b, f);
    if (!l.grad) {
      if (s.two) fail("loss alone updates one state", x, q, intra, parts, l, f, 1, 0);
      if (s.a.slot != (f - l.begin) % l.total_chains) fail("chain", x, q, intra, parts, l, f, s.a.slot, -1);
    } else {
      if (s.two != (tile.a != tile.b)) fail("two states off the diagonal", x, q, intra, parts, l, f, s.two, -1);
      // Each side's state: the block's own, or, for the small side of a rectangle tile with
      // groups, slot_base + (its index on its side) * G + (the other block's index) mod G.
      const bool grouped = l.groups > 0 && order.in_rectangle(f);
      const bool x_small = order.x_is_small();
      const int64_t small_block = x_small ? tile.a : tile.b - x, large_block = x_small ? tile.b - x : tile.a;
      const int64_t group_slot = grouped ? l.slot_base + small_block * l.groups + large_block % l.groups : -1;
      const int64_t want_a = grouped && x_small ? group_slot : tile.a;
      const int64_t want_b = grouped && !x_small ? group_slot : tile.b;
      if (s.a.slot != want_a) fail("state of a", x, q, intra, parts, l, f, s.a.slot, want_a);
      if (s.two && s.b.slot != want_b) fail("state of b", x, q, intra, parts, l, f, s.b.slot, want_b);
      if (grouped) {
        // The merge kernels fold slot slot_base + s * G + g into block first_small + s
        // (the launcher's first_small: 0 when x is the small side, else x_blocks).
        const int64_t slot = x_small ? s.a.slot : s.b.slot;
        const int64_t merged_into = (x_small ? 0 : x) + (slot - l.slot_base) / l.groups;
        const int64_t owner = x_small ? tile.a : tile.b;
        if (merged_into != owner) fail("merged into", x, q, intra, parts, l, f, merged_into, owner);
      }
    }
    last[s.a.slot] = f;
    if (s.two) last[s.b.slot] = f;
  }
}

}  // namespace

int main() {
  for (int64_t x = 1; x <= 6; ++x) {
    for (int64_t q = 0; q <= 9; ++q) {
      for (const bool intra : {true, false}) {
        const TileOrder order(x, q, intra);
        const int64_t total = order.size();
        for (int64_t parts = 1; parts <= 3; ++parts) {
          for (int64_t part = 0; part < parts; ++part) {
            const int64_t begin = total * part / parts, end = total * (part + 1) / parts;
            // With the gradient: side groups off, 2, 3, 5, and one per large-side block.
            for (const int64_t groups : {int64_t(0), int64_t(2), int64_t(3), int64_t(5), order.large_blocks()}) {
              if (groups > 0 && order.small_blocks() == 0) continue;
              check_part(order, x, q, intra, parts, StateLayout{true, groups, x + q, begin, 0}, end);
            }
            // Without: chains of 1, 2 and 7, and the launcher's min(512, tiles of the part).
            const int64_t launcher = std::max<int64_t>(1, std::min<int64_t>(512, end - begin));
            for (const int64_t chains : {int64_t(1), int64_t(2), int64_t(7), launcher}) {
              check_part(order, x, q, intra, parts, StateLayout{false, 0, x + q, begin, chains}, end);
            }
          }
        }
      }
    }
  }
  if (failures) {
    std::printf("tile_states_test: %d failures\n", failures);
    return 1;
  }
  std::printf("tile_states_test: %lld waits equal the last update of their state\n", checked);
  return 0;
}
