// Which states a tile of the CUDA uniformity kernel updates, and which earlier tile must
// have updated each of them first: the rule of the kernel's turn, in one place for the
// kernel (uniform_kernels.cu) and its host test (tests/tile_states_test.cpp), which
// holds it to a brute-force scan of every state's updates.  Host and device code.
//
// A state is a slot of the kernel's shift / sum / ticket arrays (TileParams):
//   with the gradient   a block's own slot is its index; with side groups (groups > 0)
//                       the small side's state for rectangle tile {s, l} is slot
//                       slot_base + s * groups + l mod groups (merged after the tiles);
//   without it          tile f adds its total to chain slot (f - begin) mod total_chains.
// A tile waits until each of its states' tickets shows the tile before it, then
// updates them and publishes its own index.  Every wait is on a smaller tile, so the
// order in which tiles are claimed guarantees progress.
#pragma once

#include "tile_order.h"

#include <cstdint>

namespace pyhypersphere {
namespace cuda {

// How the states of one launch are laid out (the launcher's Workspace decides).
struct StateLayout {
  bool grad;
  int64_t groups, slot_base;    // side groups (gradient only; groups 0: off)
  int64_t begin, total_chains;  // the part's first tile; chains without the gradient
};

struct TileState {
  // The tile before this one that updated the slot, -1 for none, or kAskOrder: the slot
  // is the block's own, TileOrder::previous_visit says which (resolved by thread 0 only,
  // when it waits, so that the other threads do not compute it).
  static constexpr int64_t kAskOrder = -2;
  int64_t slot;
  int64_t previous;
};

struct TileStates {
  TileState a, b;
  bool two;  // b is updated too (off the diagonal, with the gradient)
};

PYHS_HOST_DEVICE TileStates tile_states(const TileOrder& order, const StateLayout& layout, int64_t f,
                                               TilePair tile) {
  TileStates s{{tile.a, TileState::kAskOrder}, {tile.b, TileState::kAskOrder}, layout.grad && tile.a != tile.b};
  if (!layout.grad) {
    const int64_t i = f - layout.begin;
    s.a = TileState{i % layout.total_chains, i >= layout.total_chains ? f - layout.total_chains : -1};
  } else if (layout.groups > 0 && order.in_rectangle(f)) {
    const TileOrder::RectangleTile rect = order.rectangle_tile(f);
    // Assigned by value: a reference to one of the two put both in local memory.
    const TileState small{layout.slot_base + rect.s * layout.groups + rect.l % layout.groups,
                          order.previous_group_visit(f, layout.groups)};
    if (order.x_is_small()) {
      s.a = small;
    } else {
      s.b = small;
    }
  }
  return s;
}

// The tile whose ticket tile f waits for on `state`, or -1: none, or one of an earlier
// part (other parts' tiles are not this launch's to wait for).
PYHS_HOST_DEVICE int64_t tile_to_wait_for(const TileOrder& order, const StateLayout& layout,
                                                 const TileState& state, int64_t f) {
  const int64_t previous =
      state.previous == TileState::kAskOrder ? order.previous_visit(state.slot, f) : state.previous;
  return previous >= layout.begin ? previous : -1;
}

}  // namespace cuda
}  // namespace pyhypersphere
