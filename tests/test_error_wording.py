"""The same mistake reads the same in every loss: dtypes and shapes as Python prints them,
whether the check is written in C++ (uniformity, alignment) or in Python (contrastive)."""

import re

import pytest
import torch

import pyhypersphere as ph

# loss name -> a call taking (x, y); y is ignored by uniformity.
LOSSES = {
    "uniform_loss": lambda x, y: ph.uniform_loss(x),
    "align_loss": lambda x, y: ph.align_loss(x, y),
    "nt_xent_loss": lambda x, y: ph.nt_xent_loss(x, y),
    "info_nce_loss": lambda x, y: ph.info_nce_loss(x, y),
    "clip_loss": lambda x, y: ph.clip_loss(x, y),
}
PAIRED = [name for name in LOSSES if name != "uniform_loss"]
# The argument names each loss uses in its messages (its parameters' names).
NAMES = {"info_nce_loss": ("q", "k")}


@pytest.mark.parametrize("name", LOSSES)
def test_integer_input_names_the_torch_dtype(name):
    x = torch.ones(8, 5, dtype=torch.int64)
    first = NAMES.get(name, ("x", "y"))[0]
    message = (f"{name}: {first} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
               "got torch.int64")  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(message)):
        LOSSES[name](x, x)


@pytest.mark.parametrize("name", LOSSES)
def test_one_dimensional_input_names_the_shape_as_python_prints_it(name):
    x = torch.ones(8)
    first = NAMES.get(name, ("x", "y"))[0]
    with pytest.raises(ValueError, match=re.escape(f"{name}: {first} must be a 2-D tensor of shape [N, d], got shape (8,)")):
        LOSSES[name](x, x)


@pytest.mark.parametrize("name", PAIRED)
def test_mismatched_pair_names_both_shapes(name):
    x, y = torch.randn(8, 5), torch.randn(8, 4)
    a, b = NAMES.get(name, ("x", "y"))
    with pytest.raises(ValueError, match=re.escape(f"{name}: {b} must have the same shape as {a}, got {a} (8, 5) and {b} (8, 4)")):
        LOSSES[name](x, y)


# Every loss with per-anchor options: a call taking (x, y, **options), and what one weight
# stands for in its words.  The checks are shared (ops/_common.py); SigLIP had its own.
ROW_OPTION_LOSSES = {
    "nt_xent_loss": (lambda x, y, **o: ph.nt_xent_loss(x, y, **o), "anchor row of [x; y] (2N)"),
    "info_nce_loss": (lambda x, y, **o: ph.info_nce_loss(x, y, **o), "query (row of q)"),
    "clip_loss": (lambda x, y, **o: ph.clip_loss(x, y, **o), "anchor row (x's rows, then y's: 2N)"),
    "siglip_loss": (lambda x, y, **o: ph.siglip_loss(x, y, **o), "row of x"),
    "supcon_loss": (lambda x, y, **o: ph.supcon_loss(x, torch.zeros(x.shape[0], dtype=torch.int64), **o),
                    "row of x (anchor)"),
}


@pytest.mark.parametrize("name", ROW_OPTION_LOSSES)
def test_reduction_and_weight_mistakes_read_the_same_in_every_loss(name):
    call, what = ROW_OPTION_LOSSES[name]
    x = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    y = x.flip(0)
    with pytest.raises(ValueError, match=re.escape(f"{name}: reduction must be one of 'mean', 'sum', 'none', got 'avg'")):
        call(x, y, reduction="avg")
    with pytest.raises(TypeError, match=re.escape(f"{name}: weight must be a torch.Tensor or None, got list")):
        call(x, y, weight=[1.0] * 6)
    with pytest.raises(ValueError, match=re.escape(f"{name}: weight must be a floating-point tensor of shape (")
                       + r"\d+" + re.escape(f",), one weight per {what}, got a torch.int64 tensor of shape (3,)")):
        call(x, y, weight=torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=re.escape(f"{name}: weight must be on the same device as the features (cpu), got meta")):
        call(x, y, weight=torch.ones(6 if name in ("info_nce_loss", "siglip_loss", "supcon_loss") else 12, device="meta"))
