"""Column splitting shared by the Triton launchers.

Row-block kernels leave the GPU idle when there are few row blocks (queue shapes: 256
queries against 65536 keys).  The launchers then give each row block's columns to several
programs and merge their partial results afterwards in split order, in torch, so the
outputs stay bitwise reproducible.
"""

import torch
import triton


def target_programs(device: torch.device) -> int:
    """Enough programs for every SM to hold a few; on CPU (the interpreter) a small number
    so that tests exercise the column split."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def split_columns(n_rows: int, n_cols: int, block_m: int, block_n: int, device: torch.device,
                  col_splits=None) -> tuple:
    """(col_splits, cols_per_split): how many programs share a row block's columns and how
    many columns (a multiple of block_n) each sweeps.  `col_splits` forces the count
    (tests), capped at the number of column blocks."""
    row_blocks = triton.cdiv(n_rows, block_m)
    col_blocks = max(1, triton.cdiv(n_cols, block_n))
    if col_splits is None:
        col_splits = triton.cdiv(target_programs(device), row_blocks)
    col_splits = max(1, min(col_splits, col_blocks))
    cols_per_split = triton.cdiv(col_blocks, col_splits) * block_n
    return max(1, triton.cdiv(n_cols, cols_per_split)), cols_per_split


def merge_splits(m: torch.Tensor, sums: tuple, acc=None) -> tuple:
    """Merges the splits' partial online-softmax state, in split order.

    m [splits, rows]: each split's running max; every tensor in `sums` [splits, rows] and
    `acc` [splits, rows, d] (or None) holds sums shifted by that split's max.  Returns
    (max, merged sums..., merged acc) over all splits, shifted by the overall max.
    """
    if m.shape[0] == 1:
        return (m[0], *(s[0] for s in sums), None if acc is None else acc[0])
    top = m.amax(0)
    shift = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    scale = torch.exp(m - shift)
    merged_acc = None if acc is None else (acc * scale[..., None]).sum(0)
    return (top, *((s * scale).sum(0) for s in sums), merged_acc)
