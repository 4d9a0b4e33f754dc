"""A plain flash-attention forward (non-causal), modelled on Triton's fused-attention
tutorial: the yardstick compile_check prints beside the package's kernels (kernel=
reference).  Compiled only, never launched by the package.

Per step: S = Q K^T (one GEMM), the online max, P = exp2(S * scale - m) (one exp per
pair), O = O * alpha + P V (one GEMM).
"""

import triton
import triton.language as tl

# The tiles the reference lines are compiled with, bf16, d = 128: 128 x 128 on sm_90
# (wgmma keeps S's operands in shared memory); 128 x 64 before it, as the tutorial tunes
# Ampere (mma.sync holds Q, S and P in registers: 128 x 128 spills there).
CONFIGS = {
    90: {"BLOCK_M": 128, "BLOCK_N": 128, "HEAD_DIM": 128, "num_warps": 8, "num_stages": 3},
    80: {"BLOCK_M": 128, "BLOCK_N": 64, "HEAD_DIM": 128, "num_warps": 8, "num_stages": 3},
}


def config(arch: int) -> dict:
    return CONFIGS[90 if arch >= 90 else 80]


@triton.jit
def attention_forward_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sm_scale, n_ctx, stride_row,
                             HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    qk_scale = sm_scale * 1.44269504  # exp2 with log2(e) folded into the scale
    q = tl.make_tensor_descriptor(q_ptr, [n_ctx, HEAD_DIM], [stride_row, 1], [BLOCK_M, HEAD_DIM]).load([start_m, 0])
    k_desc = tl.make_tensor_descriptor(k_ptr, [n_ctx, HEAD_DIM], [stride_row, 1], [BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(v_ptr, [n_ctx, HEAD_DIM], [stride_row, 1], [BLOCK_N, HEAD_DIM])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start_n in range(0, n_ctx, BLOCK_N):
        k = k_desc.load([start_n, 0])
        qk = tl.dot(q, k.T)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = v_desc.load([start_n, 0])
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_ij
    tl.store(lse_ptr + offs_m, m_i + tl.math.log2(l_i))
    tl.store(o_ptr + offs_m[:, None] * stride_row + offs_d[None, :], (acc / l_i[:, None]).to(o_ptr.dtype.element_ty))
