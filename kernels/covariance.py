"""Per-prompt covariance and correlation between each objective's reward and a per-completion weight.

This is CTWA's statistic (Lu & Jiang 2026, "Uncovering Cross-Objective Interference in Multi-Objective
Alignment", eq. for Cov(r_k, w) in Sec. 4; official code `compute_ctwa_stats`, spec/ctwa-reference.md §8.4 step 8).
Rows come in groups of G consecutive completions of the same prompt (row = prompt * G + g). For group p with
kept members S_p (n_p = |S_p|), objective k, rewards u (N, K) and weights w (N,):

    w~_i = w_i - mean_{S_p}(w)            u~_ik = u_ik - mean_{S_p}(u_k)
    cov_pk = (1/n_p) sum_{i in S_p} u~_ik w~_i                       (population covariance, ddof 0)
    var_w_p = (1/n_p) sum w~_i^2          var_u_pk = (1/n_p) sum u~_ik^2
    corr_pk = cov_pk / sqrt(var_u_pk var_w_p)   only where sqrt(var_u_pk var_w_p) > 1e-8 (valid), else 0

Groups with fewer than 2 kept members give cov = 0 and are invalid for every k. A group where objective k is
constant gives cov_pk = 0 (it still counts toward the covariance average, not toward the correlation average).
Gradients (cov only): since sum_{S_p} u~_ik = 0, cov_pk = (1/n_p) sum u~_ik w_i, so
    d cov_pk / d w_i = u~_ik / n_p,    d cov_pk / d u_ik = w~_i / n_p    (i kept; 0 otherwise).

Why fuse: the statistic is tiny (N = 512, K = 3 in the paper), so the eager version is launch-bound, not
bandwidth-bound: masked means, centring, products and reductions are ~20 kernel launches each reading and
writing (N, K) temporaries. One program per prompt reads its G x K tile once, keeps everything in registers
and writes K + K + 1 numbers; the backward is a second single pass. Both are noise next to a forward pass.

    python -m pytest -q tests/test_kernels.py -k covariance
"""
import os

import torch
import triton
import triton.language as tl

CORR_EPS = 1e-8  # official code: hard-coded eps on the std product (the config's std_eps is unused)


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _check(rewards, w, group_size, keep):
    N = rewards.shape[0]
    if rewards.dim() != 2 or w.shape != (N,):
        raise ValueError(f"rewards must be (N, K) and w (N,); got {tuple(rewards.shape)} and {tuple(w.shape)}")
    if group_size < 1 or N % group_size:
        raise ValueError(f"N={N} rows must split into whole groups of group_size={group_size} (row = prompt*G + g)")
    if keep is not None and keep.shape != (N,):
        raise ValueError(f"keep must be a (N,) bool mask, got shape {tuple(keep.shape)}")


def group_moments_ref(rewards, w, group_size, keep=None):
    """Eager oracle: (cov (P, K), var_u (P, K), var_w (P,), n (P,)) with zeros for groups of < 2 kept rows."""
    _check(rewards, w, group_size, keep)
    N, K = rewards.shape
    P, dt = N // group_size, torch.promote_types(rewards.dtype, w.dtype)
    keep = torch.ones(N, dtype=torch.bool, device=w.device) if keep is None else keep.bool()
    m = keep.view(P, group_size, 1).to(dt)  # (P, G, 1)
    u = torch.where(m.bool(), rewards.view(P, group_size, K).to(dt), 0)  # (P, G, K); where: dropped rows may be NaN
    ww = torch.where(m.bool(), w.view(P, group_size, 1).to(dt), 0)  # (P, G, 1)
    n = m.sum(1)  # (P, 1)
    inv_n = torch.where(n >= 2, 1.0 / n.clamp(min=1), 0)  # groups with < 2 kept members contribute 0
    uc = (u - u.sum(1, keepdim=True) * inv_n.unsqueeze(1)) * m  # (P, G, K)
    wc = (ww - ww.sum(1, keepdim=True) * inv_n.unsqueeze(1)) * m  # (P, G, 1)
    cov = (uc * wc).sum(1) * inv_n  # (P, K)
    var_u = (uc * uc).sum(1) * inv_n  # (P, K)
    var_w = (wc * wc).sum(1).squeeze(1) * inv_n.squeeze(1)  # (P,)
    return cov, var_u, var_w, n.squeeze(1)


def group_covariance_ref(rewards, w, group_size, keep=None):
    """Eager oracle for group_covariance: (P, K) population covariance, differentiable by autograd."""
    return group_moments_ref(rewards, w, group_size, keep)[0]


@triton.jit
def _group_moments_fwd_kernel(
    u_ptr,  # (N, K) rewards
    w_ptr,  # (N,) per-completion weight
    keep_ptr,  # (N,) int8, 1 = kept
    cov_ptr,  # (P, K) out
    var_u_ptr,  # (P, K) out
    var_w_ptr,  # (P,) out
    n_ptr,  # (P,) out: kept members
    stride_u,  # row stride of u
    G, K,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # one program per prompt group
    rows = pid * G + tl.arange(0, BLOCK_G)
    cols = tl.arange(0, BLOCK_K)
    rmask = tl.arange(0, BLOCK_G) < G
    kept = (tl.load(keep_ptr + rows, mask=rmask, other=0) != 0) & rmask
    m = kept.to(tl.float32)
    n = tl.sum(m, axis=0)
    inv_n = tl.where(n >= 2.0, 1.0 / tl.maximum(n, 1.0), 0.0)
    tile_mask = kept[:, None] & (cols[None, :] < K)
    u = tl.load(u_ptr + rows[:, None] * stride_u + cols[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + rows, mask=kept, other=0.0).to(tl.float32)
    uc = tl.where(tile_mask, u - tl.sum(u, axis=0)[None, :] * inv_n, 0.0)  # (BLOCK_G, BLOCK_K)
    wc = tl.where(kept, w - tl.sum(w, axis=0) * inv_n, 0.0)  # (BLOCK_G,)
    cmask = cols < K
    tl.store(cov_ptr + pid * K + cols, tl.sum(uc * wc[:, None], axis=0) * inv_n, mask=cmask)
    tl.store(var_u_ptr + pid * K + cols, tl.sum(uc * uc, axis=0) * inv_n, mask=cmask)
    tl.store(var_w_ptr + pid, tl.sum(wc * wc, axis=0) * inv_n)
    tl.store(n_ptr + pid, n)


@triton.jit
def _group_covariance_bwd_kernel(
    u_ptr, w_ptr, keep_ptr,  # as in the forward
    dcov_ptr,  # (P, K) upstream gradient
    du_ptr,  # (N, K) out
    dw_ptr,  # (N,) out
    stride_u, G, K,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rows = pid * G + tl.arange(0, BLOCK_G)
    cols = tl.arange(0, BLOCK_K)
    rmask = tl.arange(0, BLOCK_G) < G
    kept = (tl.load(keep_ptr + rows, mask=rmask, other=0) != 0) & rmask
    n = tl.sum(kept.to(tl.float32), axis=0)
    inv_n = tl.where(n >= 2.0, 1.0 / tl.maximum(n, 1.0), 0.0)
    tile_mask = kept[:, None] & (cols[None, :] < K)
    u = tl.load(u_ptr + rows[:, None] * stride_u + cols[None, :], mask=tile_mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + rows, mask=kept, other=0.0).to(tl.float32)
    uc = tl.where(tile_mask, u - tl.sum(u, axis=0)[None, :] * inv_n, 0.0)
    wc = tl.where(kept, w - tl.sum(w, axis=0) * inv_n, 0.0)
    g = tl.load(dcov_ptr + pid * K + cols, mask=cols < K, other=0.0).to(tl.float32) * inv_n  # (BLOCK_K,)
    out_mask = rmask[:, None] & (cols[None, :] < K)
    tl.store(du_ptr + rows[:, None] * K + cols[None, :], wc[:, None] * g[None, :], mask=out_mask)
    tl.store(dw_ptr + rows, tl.sum(uc * g[None, :], axis=1), mask=rmask)


def _prepare(rewards, w, group_size, keep):
    _check(rewards, w, group_size, keep)
    N, K = rewards.shape
    keep = torch.ones(N, dtype=torch.int8, device=w.device) if keep is None else keep.to(torch.int8).contiguous()
    grid = (N // group_size,)
    blocks = dict(BLOCK_G=triton.next_power_of_2(group_size), BLOCK_K=triton.next_power_of_2(K))
    return rewards.float().contiguous(), w.float().contiguous(), keep, grid, blocks


def group_moments_fwd(rewards, w, group_size, keep=None):
    """Triton launcher: (cov (P, K), var_u (P, K), var_w (P,), n (P,)) in fp32."""
    u, wf, keep, grid, blocks = _prepare(rewards, w, group_size, keep)
    (P,), K = grid, u.shape[1]
    cov, var_u = u.new_empty(P, K), u.new_empty(P, K)
    var_w, n = u.new_empty(P), u.new_empty(P)
    _group_moments_fwd_kernel[grid](u, wf, keep, cov, var_u, var_w, n, u.stride(0), group_size, K, **blocks)
    return cov, var_u, var_w, n


def group_covariance_bwd(rewards, w, group_size, keep, dcov):
    """Triton launcher: (d rewards (N, K), d w (N,)) in fp32."""
    u, wf, keep, grid, blocks = _prepare(rewards, w, group_size, keep)
    du, dw = torch.empty_like(u), torch.empty_like(wf)
    _group_covariance_bwd_kernel[grid](u, wf, keep, dcov.float().contiguous(), du, dw, u.stride(0), group_size,
                                       u.shape[1], **blocks)
    return du, dw


class GroupCovarianceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rewards, w, group_size, keep):
        ctx.save_for_backward(rewards, w, keep)
        ctx.group_size = group_size
        cov = group_moments_fwd(rewards, w, group_size, keep)[0]
        return cov.to(torch.promote_types(rewards.dtype, w.dtype))

    @staticmethod
    def backward(ctx, dcov):
        rewards, w, keep = ctx.saved_tensors
        du, dw = group_covariance_bwd(rewards, w, ctx.group_size, keep, dcov)
        du = du.to(rewards.dtype) if ctx.needs_input_grad[0] else None
        dw = dw.to(w.dtype) if ctx.needs_input_grad[1] else None
        return du, dw, None, None


def group_covariance(rewards: torch.Tensor, w: torch.Tensor, group_size: int,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """Population covariance per prompt of each objective's reward with w: (N, K), (N,) -> (N // group_size, K).
    keep (N,) bool drops rows (e.g. outliers); groups with < 2 kept rows give 0. Differentiable in rewards and w."""
    if _use_triton(w):
        return GroupCovarianceFn.apply(rewards, w, group_size, keep)
    return group_covariance_ref(rewards, w, group_size, keep)


@torch.no_grad()
def group_correlation(rewards: torch.Tensor, w: torch.Tensor, group_size: int,
                      keep: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(corr (P, K), valid (P, K) bool): Pearson correlation per prompt, 0 and invalid where the group has < 2 kept
    rows or std_u * std_w <= 1e-8 (spec §8.4 step 8). Not differentiable."""
    moments = group_moments_fwd if _use_triton(w) else group_moments_ref
    cov, var_u, var_w, n = moments(rewards, w, group_size, keep)
    std_prod = (var_u * var_w.unsqueeze(1)).sqrt()  # (P, K)
    valid = (std_prod > CORR_EPS) & (n >= 2).unsqueeze(1)
    return torch.where(valid, cov / torch.where(valid, std_prod, 1.0), 0.0), valid
