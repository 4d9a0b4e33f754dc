"""Tile pieces shared by the Triton kernels: a program's block of rows, the inner
products of a tile of rows with a tile of partner columns, and the bound on the part
slicing's int32 tile index."""

import torch
import triton
import triton.language as tl

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


def row_tile_config(operand_dtype: torch.dtype, d: int, precision: str, has_parts: bool) -> dict:
    """The contrastive kernels' base block configuration (the uniformity kernel's until
    issue 23; contrastive_config adjusts it).  The caps keep the row block's accumulator
    [BLOCK_M, BLOCK_D] and the part mask's integer tiles in registers without spills."""
    wide = operand_dtype == torch.float64
    split = precision == "tf32x3"  # three products on hi/lo halves: more registers
    cap = 64 if wide or split else 128
    chunked = d > cap
    # Past the cap the Gram loops over 64-wide chunks (32 for 3xTF32), one stage.
    block_d = (32 if split else 64) if chunked else max(16, triton.next_power_of_2(d))
    warps = 8 if block_d >= 128 or chunked else 4
    if wide or split:
        block_m, block_n = 32, 32
    else:
        # The part mask at full width needs the registers of half a row block.
        block_m, block_n = (32 if chunked or (has_parts and block_d >= 128) else 64), 64
    return {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "num_warps": warps,
            "num_stages": 1 if chunked else 2}


@triton.jit
def row_block(r_ptr, row_start, n_rows, d, stride_r, ONE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr,
              BLOCK_D: tl.constexpr, WIDEN_OPERANDS: tl.constexpr, acc_t: tl.constexpr):
    """(local row numbers, their mask, global int64 row indices, the rows' features when
    they fit one BLOCK_D chunk: loaded once, reused against every column tile)."""
    local = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = local < n_rows
    rows = (row_start + local).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    r_i = tl.zeros([BLOCK_M, BLOCK_D], acc_t)  # unused when chunked
    if ONE_CHUNK:
        r_i = tl.load(r_ptr + rows[:, None] * stride_r + offs_d[None, :],
                      mask=row_ok[:, None] & (offs_d[None, :] < d), other=0.0)
        if WIDEN_OPERANDS:
            r_i = r_i.to(acc_t)
    return local, row_ok, rows, r_i


@triton.jit
def logit_tile(r_ptr, c_ptr, rows, cols, row_ok, col_ok, r_i, d, stride_r, stride_c,
               ONE_CHUNK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, WIDEN_OPERANDS: tl.constexpr,
               acc_t: tl.constexpr):
    """(<R_i, C_j> over the tile, the column rows C_j when they fit one chunk)."""
    offs_d = tl.arange(0, BLOCK_D)
    if ONE_CHUNK:
        c_j = tl.load(c_ptr + cols[:, None] * stride_c + offs_d[None, :],
                      mask=col_ok[:, None] & (offs_d[None, :] < d), other=0.0)
        if WIDEN_OPERANDS:
            c_j = c_j.to(acc_t)
        gram = tl.dot(r_i, tl.trans(c_j), input_precision=PRECISION, out_dtype=acc_t)
    else:
        c_j = r_i  # unused: the chunked gradient loads its own slice of C_j
        gram = tl.zeros([BLOCK_M, BLOCK_N], acc_t)
        # Row pointers as vectors, broadcast inside the loop: hoisted [M, D] pointer tiles
        # of 64-bit addresses would take the registers.
        ri_rows = r_ptr + rows * stride_r
        cj_rows = c_ptr + cols * stride_c
        for k0 in range(0, d, BLOCK_D):
            dk = k0 + offs_d
            ri_k = tl.load(ri_rows[:, None] + dk[None, :], mask=row_ok[:, None] & (dk[None, :] < d), other=0.0)
            cj_k = tl.load(cj_rows[:, None] + dk[None, :], mask=col_ok[:, None] & (dk[None, :] < d), other=0.0)
            if WIDEN_OPERANDS:
                ri_k = ri_k.to(acc_t)
                cj_k = cj_k.to(acc_t)
            gram += tl.dot(ri_k, tl.trans(cj_k), input_precision=PRECISION, out_dtype=acc_t)
    return gram, c_j
