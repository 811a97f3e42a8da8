"""Log-probs (and entropy) of the chosen tokens straight from the last hidden states and the LM head weight.

For row r with hidden h_r (C,), LM head weight E (V, C), target y_r and temperature τ:
    z = E h_r / τ,   lse = log Σ_v exp(z_v),   logp_r = z_y - lse,   H_r = lse - Σ_v p_v z_v   (p = softmax(z))
Backward (g = d/d logp_r, k = d/d H_r):
    d z_v = g (1[v = y] - p_v) - k p_v (z_v - (lse - H_r)),   d logits = d z / τ,
    d h_r = d logits_r E,   d E = Σ_r d logits_r^T h_r.
Rows are processed in chunks: each chunk's logits (rows x V) are computed by a torch matmul in the model dtype, one
Triton program per row streams them once in BLOCK_V blocks with an online max / sum / Σ e^z z (fp32) and writes
logp, lse (and H); backward recomputes the chunk's logits and overwrites them in place with d logits in one pass.

Why it pays: eager `log_softmax(hidden @ E.T)` materialises (N, T, V) logits, then an fp32 copy, log-softmax
output and, in backward, the same again. Qwen's V = 151,936 at N x T = 512 x 1024 tokens is 80 G logits: 160 GB in
bf16, 320 GB per fp32 copy. Chunked, only rows x V of logits live at a time (CHUNK_ELEMS = 64 M, 128 MB in bf16)
and each is read once forward and read+written once backward; the cost is one extra matmul (the recompute).
Peers: Liger-Kernel's fused linear cross-entropy / selective log-softmax; nano-aha-moment compiles log_softmax+gather.

    python -m pytest -q tests/test_kernels.py -k logprobs
"""
import os

import torch
import triton
import triton.language as tl

CHUNK_ELEMS = 2**26  # logits elements per chunk (rows = CHUNK_ELEMS // V): 128 MB in bf16
MAX_BLOCK_V = 4096


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def token_logprobs_ref(hidden, weight, targets, temperature=1.0, return_entropy=False):
    """Eager oracle: materialises the (..., V) logits; log-softmax in fp32 (fp64 stays fp64 for gradcheck)."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32)) / temperature  # (N, T, V)
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N, T)
    if not return_entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


@triton.jit
def _logprobs_fwd_kernel(
    logits_ptr,  # (R, V) raw logits of one chunk, model dtype
    targets_ptr,  # (R,) int64 chosen tokens
    logp_ptr, lse_ptr, ent_ptr,  # (R,) fp32 outputs
    stride_r, V, inv_temp,
    RETURN_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # one program per row; int64 because row * V overflows int32
    row_ptr = logits_ptr + pid * stride_r
    m = tl.full([], float("-inf"), tl.float32)  # running max
    s = tl.zeros([], tl.float32)  # running Σ exp(z - m)
    t = tl.zeros([], tl.float32)  # running Σ exp(z - m) z, for the entropy
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)  # 0 on masked columns
        s = s * scale + tl.sum(e, axis=0)
        if RETURN_ENTROPY:
            t = t * scale + tl.sum(e * tl.where(valid, z, 0.0), axis=0)  # where: 0 * -inf would be NaN
        m = m_new
    lse = m + tl.log(s)
    y = tl.load(targets_ptr + pid)
    z_y = tl.load(row_ptr + y, mask=(y >= 0) & (y < V), other=0.0).to(tl.float32) * inv_temp
    tl.store(logp_ptr + pid, z_y - lse)
    tl.store(lse_ptr + pid, lse)
    if RETURN_ENTROPY:
        tl.store(ent_ptr + pid, lse - t / s)


@triton.jit
def _logprobs_bwd_kernel(
    logits_ptr,  # (R, V) recomputed raw logits, overwritten in place with d logits
    targets_ptr, lse_ptr, ent_ptr,  # (R,) from the forward
    dlogp_ptr, dent_ptr,  # (R,) upstream gradients
    stride_r, V, inv_temp,
    HAS_DENT: tl.constexpr, BLOCK_V: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + pid * stride_r
    y = tl.load(targets_ptr + pid)
    lse = tl.load(lse_ptr + pid)
    g = tl.load(dlogp_ptr + pid).to(tl.float32)
    if HAS_DENT:
        k = tl.load(dent_ptr + pid).to(tl.float32)
        mean_z = lse - tl.load(ent_ptr + pid)  # Σ p z
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        z = tl.load(row_ptr + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        dz = g * (tl.where(cols == y, 1.0, 0.0) - p)
        if HAS_DENT:
            dz -= k * p * (z - mean_z)
        tl.store(row_ptr + cols, (dz * inv_temp).to(logits_ptr.dtype.element_ty), mask=valid)


def _chunks(R, V, chunk_rows):
    step = chunk_rows or max(1, CHUNK_ELEMS // V)
    return [(s, min(s + step, R)) for s in range(0, R, step)]


def token_logprobs_fwd(hidden, weight, targets, temperature, return_entropy, chunk_rows=None):
    """Triton launcher on 2-D inputs hidden (R, C), targets (R,): (logp (R,), lse (R,), entropy (R,) or None)."""
    R, V = hidden.shape[0], weight.shape[0]
    weight = weight.to(hidden.dtype)  # matmuls in the activation dtype (bf16 under autocast)
    logp, lse = (torch.empty(R, dtype=torch.float32, device=hidden.device) for _ in range(2))
    ent = torch.empty_like(logp) if return_entropy else logp  # logp is a dummy pointer when unused
    block = min(MAX_BLOCK_V, triton.next_power_of_2(V))
    for s, e in _chunks(R, V, chunk_rows):
        logits = hidden[s:e] @ weight.T  # (rows, V), never more than one chunk alive
        _logprobs_fwd_kernel[(e - s,)](logits, targets[s:e], logp[s:e], lse[s:e], ent[s:e], logits.stride(0), V,
                                       1.0 / temperature, RETURN_ENTROPY=return_entropy, BLOCK_V=block, num_warps=8)
    return logp, lse, ent if return_entropy else None


def token_logprobs_bwd(dlogp, dent, hidden, weight, targets, lse, ent, temperature, chunk_rows=None,
                       need_hidden=True, need_weight=True):
    """Triton launcher: (d hidden (R, C) or None, d weight (V, C) or None); recomputes each chunk's logits."""
    R, V, weight_dtype = hidden.shape[0], weight.shape[0], weight.dtype
    weight = weight.to(hidden.dtype)  # the same logits as the forward
    dh = torch.empty_like(hidden) if need_hidden else None
    dw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None  # fp32 sum
    block = min(MAX_BLOCK_V, triton.next_power_of_2(V))
    dlogp = dlogp.contiguous()
    dent = dent.contiguous() if dent is not None else dlogp
    for s, e in _chunks(R, V, chunk_rows):
        dlogits = hidden[s:e] @ weight.T  # (rows, V) recomputed logits, turned into d logits in place
        _logprobs_bwd_kernel[(e - s,)](dlogits, targets[s:e], lse[s:e], ent[s:e] if ent is not None else lse[s:e],
                                       dlogp[s:e], dent[s:e], dlogits.stride(0), V, 1.0 / temperature,
                                       HAS_DENT=ent is not None, BLOCK_V=block, num_warps=8)
        if need_hidden:
            dh[s:e] = dlogits @ weight  # (rows, C)
        if need_weight:
            dw += dlogits.T @ hidden[s:e]  # (V, C)
    return dh, dw.to(weight_dtype) if need_weight else None


class TokenLogprobsFn(torch.autograd.Function):
    # Autocast is switched off inside: the backward runs outside the caller's autocast region, and its recomputed
    # logits must equal the forward's, so both use explicit dtypes (hidden's) instead.
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, return_entropy, chunk_rows):
        shape, C = targets.shape, hidden.shape[-1]
        h2, y = hidden.reshape(-1, C).contiguous(), targets.reshape(-1).contiguous()  # (R, C), (R,)
        with torch.autocast(hidden.device.type, enabled=False):
            logp, lse, ent = token_logprobs_fwd(h2, weight, y, temperature, return_entropy, chunk_rows)
        ctx.save_for_backward(h2, weight, y, lse, ent)
        ctx.hparams, ctx.hidden_shape = (temperature, chunk_rows), hidden.shape
        return (logp.view(shape), ent.view(shape)) if return_entropy else logp.view(shape)

    @staticmethod
    def backward(ctx, dlogp, dent=None):
        h2, weight, y, lse, ent = ctx.saved_tensors
        with torch.autocast(h2.device.type, enabled=False):
            dh, dw = token_logprobs_bwd(dlogp.reshape(-1), None if dent is None else dent.reshape(-1), h2, weight,
                                        y, lse, ent, *ctx.hparams, need_hidden=ctx.needs_input_grad[0],
                                        need_weight=ctx.needs_input_grad[1])
        return (dh.view(ctx.hidden_shape) if dh is not None else None), dw, None, None, None, None


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                   return_entropy: bool = False, chunk_rows: int | None = None):
    """log π(target) (N, T) fp32 [, entropy (N, T)] from hidden (N, T, C) and LM head weight (V, C), never holding
    more than chunk_rows x V logits (default CHUNK_ELEMS // V rows). Differentiable in hidden and weight."""
    if hidden.shape[:-1] != targets.shape or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"need hidden (N, T, C), weight (V, C), targets (N, T); got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    if _use_triton(hidden):
        return TokenLogprobsFn.apply(hidden, weight, targets, temperature, return_entropy, chunk_rows)
    return token_logprobs_ref(hidden, weight, targets, temperature, return_entropy)
