"""The operators by family: one module per loss family holds its fake kernel, autograd,
public loss function(s) and its distributed specification (docs/adding_a_loss.md).

    uniform.py      uniform_lse, uniform_loss          (uniform_distributed.py: global batch)
    align.py        align_loss
    contrastive.py  contrastive_lse(_backward), contrastive_lse_row_grad, contrastive_mean_lse,
                    nt_xent_loss, info_nce_loss, clip_loss (contrastive_distributed.py: global batch)
    siglip.py       siglip, siglip_loss, global_siglip_loss (SigLIP's sigmoid loss)
    supcon.py       supcon_lse(_backward), supcon_loss, distributed_supcon_loss
    _common.py      the argument helpers and torch.func machinery they share

Importing this package registers every family's fake kernels and autograd.  FAMILIES is
the one list of families; OPS ({op: has a C++ CUDA kernel}) is built from their
declared OPS and read by gpu_backend.py's table of implementations, which finds an op's
Triton launcher (of the op's name) in triton_kernels/<family>.py.
"""

from . import align, contrastive, siglip, supcon, uniform

FAMILIES = (uniform, align, contrastive, siglip, supcon)

OPS = {op: has_cuda for family in FAMILIES for op, has_cuda in family.OPS.items()}

# op -> its family's short name, which names its files (triton_kernels/<family>.py, ...).
FAMILY_OF = {op: family.__name__.rpartition(".")[2] for family in FAMILIES for op in family.OPS}
