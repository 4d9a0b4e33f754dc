"""Checks shared by the Triton launchers: the device's compute capability, the bound on
the part slicing's int32 tile index, and the installed Triton's version where a block
choice depends on it."""

import functools

INT32_LIMIT = 2**31
# The newest Triton the block choices were compile-checked with (compile_check, every
# configuration spill-free).  Triton 3.6 (the GPU image's) was checked too: where its
# compiler fails or spills on a choice, the launchers take the older path on every
# version before this one (triton_before_newest), since the versions in between were
# not checked.
NEWEST_CHECKED_TRITON = (3, 9)
# The kernels' tl.dot formats (TF32, 3xTF32, bf16, fp64) need Ampere's tensor cores.
MIN_CAPABILITY = (8, 0)


def check_device(device, function: str) -> None:
    """Raises NotImplementedError, naming the function, on an NVIDIA GPU older than
    MIN_CAPABILITY (the compile would fail there with a less clear message)."""
    import torch

    if device.type == "cuda" and torch.version.hip is None:
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            raise NotImplementedError(
                f"{function}: the Triton kernels need a GPU of compute capability "
                f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer, got {capability[0]}.{capability[1]}"
            )


def part_index_fits(tiles: int, triangle_blocks: int) -> bool:
    """Whether the kernels' int32 tile index of the part mask cannot overflow: the tile
    count, and the triangle formula's products of block indices (up to blocks^2)."""
    return max(tiles, triangle_blocks * triangle_blocks) < INT32_LIMIT


@functools.lru_cache(maxsize=None)
def triton_before_newest() -> bool:
    """Whether the installed Triton predates NEWEST_CHECKED_TRITON (then the blocks that
    only it compiles without spills are not chosen: see the callers).  Read once: the
    config functions ask on every launch."""
    import triton

    version = tuple(int(part) for part in triton.__version__.split("+")[0].split(".")[:2])
    return version < NEWEST_CHECKED_TRITON
