"""Checks shared by the Triton launchers: the device's compute capability and the bound
on the part slicing's int32 tile index."""

INT32_LIMIT = 2**31
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
