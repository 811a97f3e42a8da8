"""Fused per-token PPO/GRPO loss: clipped surrogate with dual clip, KL to a reference, and CTWA's clipped weight.

Per valid token (spec/ctwa-reference.md §7.1, §7.2, §8.3; verl `compute_policy_loss_vanilla`, `kl_penalty`):
    delta = clamp(logp - old_logp, -20, 20),   rho = exp(delta)
    pg = max(-A rho, -A clamp(rho, 1 - eps_low, 1 + eps_high));   if A < 0: pg = min(pg, -A c)   (dual clip)
    kl = k1: logp - ref_logp | k2: (logp - ref_logp)^2 / 2 | k3 (low_var_kl): x = clamp(ref_logp - logp, -20, 20),
         clamp(exp(x) - x - 1, -10, 10)
    token_loss = (pg + kl_coef * kl) * mask
    W = A rho 1[unclipped],  1[unclipped] = rho <= 1 + eps_high if A >= 0 else rho >= 1 - eps_low   (sign of A)
and backward: d token_loss / d logp = -A rho [surrogate not clipped, delta inside +-20] + kl_coef * d kl / d logp,
with d k1 = 1, d k2 = logp - ref_logp, d k3 = 1 - exp(x) (0 where a clamp is active), all times mask.
eps_low / eps_high / clip_c = None switch that clip off (the ε = c = 100 of the official REINFORCE scripts is the
same thing in practice). W uses the advantage passed in: give the per-sequence Â_i (spec §8.4 step 1) to get
exactly CTWA's statistic; for outcome rewards the per-token advantage is that constant anyway.

Why fuse: eager PyTorch runs ~25 elementwise ops over (N, T) (ratio, clamped ratio, two surrogates, max, dual
clip, KL pieces, masks, W), each a launch that reads one or two and writes one full fp32 (N, T) tensor, and autograd
keeps most of them for backward. At N x T = 512 x 1024 (2 MB per tensor) that is ~150 MB of traffic forward and about
as much backward. The fused forward reads logp, old, ref (2 MB each), mask (0.5 MB), adv (per row) and writes loss,
W, kl: ~12.5 MB, one launch; the backward recomputes from the same inputs and writes d logp: ~8.5 MB, one launch.

    python -m pytest -q tests/test_kernels.py -k grpo
"""
import os

import torch
import triton
import triton.language as tl

KL_TYPES = {"k1": 0, "k2": 1, "k3": 2}
BLOCK = 1024  # tokens per program: elementwise, so any power of two that fills a warp group works


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate from samples of π (Schulman, "Approximating KL divergence", 2020):
    k1 = log r⁻¹ (unbiased), k2 = ½(log r)² (biased, low variance), k3 = r - 1 - log r (unbiased, ≥ 0; verl
    low_var_kl with its clamps), r = π_ref / π."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp).square()
    if kind == "k3":
        x = (ref_logp - logp).clamp(-20, 20)
        return (x.exp() - x - 1).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {kind!r}; use one of {sorted(KL_TYPES)}")


def _clip_bounds(eps_low, eps_high, clip_c):
    big = torch.finfo(torch.float32).max  # "off"; finite so that 0 * c stays 0 where inf would give NaN
    return (-big if eps_low is None else 1.0 - eps_low, big if eps_high is None else 1.0 + eps_high,
            big if clip_c is None else float(clip_c))


def grpo_loss_ref(logp, old_logp, adv, mask, ref_logp=None, eps_low=0.2, eps_high=0.2, clip_c=3.0, kl_coef=0.0,
                  kl_type="k3"):
    """Eager oracle, verl's ops one by one: (token_loss (N, T), W (N, T), kl (N, T)); adv is (N,) or (N, T)."""
    lo, hi, c = _clip_bounds(eps_low, eps_high, clip_c)
    adv = adv.unsqueeze(1) if adv.dim() == 1 else adv  # (N, 1) broadcasts over T
    dt = torch.promote_types(logp.dtype, torch.float32)  # fp32 math for bf16/fp32, fp64 kept for gradcheck
    logp32, old32 = logp.to(dt), old_logp.to(dt)
    m = mask.to(torch.float32)
    ratio = (logp32 - old32).clamp(-20, 20).exp()
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(lo, hi))
    pg = torch.where(adv < 0, torch.minimum(-adv * c, pg), pg)
    kl = kl_penalty(logp32, ref_logp.to(dt), kl_type) if ref_logp is not None else torch.zeros_like(logp32)
    with torch.no_grad():
        unclipped = torch.where(adv >= 0, ratio <= hi, ratio >= lo)
        W = adv * ratio * unclipped * m
    return (pg + kl_coef * kl) * m, W, kl.detach() * m


@triton.jit
def _grpo_token_terms(offs, valid, T, logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, lo, hi, c, kl_coef,
                      HAS_REF: tl.constexpr, KL_TYPE: tl.constexpr, ADV_PER_ROW: tl.constexpr):
    """Shared by forward and backward: per-token (loss, d loss / d logp, W, kl), all fp32 and masked."""
    m = (tl.load(mask_ptr + offs, mask=valid, other=0) != 0) & valid
    logp = tl.load(logp_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    adv_offs = offs // T if ADV_PER_ROW else offs  # adv (N,) is one value per row
    adv = tl.load(adv_ptr + adv_offs, mask=valid, other=0.0).to(tl.float32)
    delta = logp - old
    ratio = tl.exp(tl.minimum(tl.maximum(delta, -20.0), 20.0))
    d_ratio = tl.where((delta >= -20.0) & (delta <= 20.0), ratio, 0.0)  # clamp passes the gradient inside
    # max(-A rho, -A clamp(rho)) then min with -A c for A < 0 is -A times an effective ratio: min(rho, clamp) for
    # A >= 0, min(max(rho, clamp), c) for A < 0. The gradient flows only where that effective ratio is rho itself.
    clamped = tl.minimum(tl.maximum(ratio, lo), hi)
    eff = tl.where(adv >= 0, tl.minimum(ratio, clamped), tl.minimum(tl.maximum(ratio, clamped), c))
    pg = -adv * eff
    d_pg = tl.where(eff == ratio, -adv * d_ratio, 0.0)
    kl = tl.zeros_like(logp)
    d_kl = tl.zeros_like(logp)
    if HAS_REF:
        ref = tl.load(ref_ptr + offs, mask=valid, other=0.0).to(tl.float32)
        if KL_TYPE == 0:  # k1
            kl = logp - ref
            d_kl = tl.full(logp.shape, 1.0, tl.float32)
        elif KL_TYPE == 1:  # k2
            kl = 0.5 * (logp - ref) * (logp - ref)
            d_kl = logp - ref
        else:  # k3 = low_var_kl with verl's clamps
            x_raw = ref - logp
            x = tl.minimum(tl.maximum(x_raw, -20.0), 20.0)
            k3 = tl.exp(x) - x - 1.0
            kl = tl.minimum(tl.maximum(k3, -10.0), 10.0)
            inside = (x_raw >= -20.0) & (x_raw <= 20.0) & (k3 >= -10.0) & (k3 <= 10.0)
            d_kl = tl.where(inside, 1.0 - tl.exp(x), 0.0)
    unclipped = tl.where(adv >= 0, ratio <= hi, ratio >= lo)
    loss = tl.where(m, pg + kl_coef * kl, 0.0)
    d_loss = tl.where(m, d_pg + kl_coef * d_kl, 0.0)
    W = tl.where(m & unclipped, adv * ratio, 0.0)
    return loss, d_loss, W, tl.where(m, kl, 0.0)


@triton.jit
def _grpo_loss_fwd_kernel(
    logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr,  # (N*T,) inputs; adv (N,) if ADV_PER_ROW; mask int8
    loss_ptr, w_ptr, kl_ptr,  # (N*T,) fp32 outputs
    n_tokens, T, lo, hi, c, kl_coef,  # sizes; clip bounds 1-eps_low, 1+eps_high, dual clip c; KL coefficient
    HAS_REF: tl.constexpr, KL_TYPE: tl.constexpr, ADV_PER_ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_tokens
    loss, _, W, kl = _grpo_token_terms(offs, valid, T, logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, lo, hi, c,
                                       kl_coef, HAS_REF, KL_TYPE, ADV_PER_ROW)
    tl.store(loss_ptr + offs, loss, mask=valid)
    tl.store(w_ptr + offs, W, mask=valid)
    tl.store(kl_ptr + offs, kl, mask=valid)


@triton.jit
def _grpo_loss_bwd_kernel(
    dloss_ptr,  # (N*T,) upstream gradient of token_loss
    logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr,  # as in the forward
    dlogp_ptr,  # (N*T,) out, logp's dtype
    n_tokens, T, lo, hi, c, kl_coef,
    HAS_REF: tl.constexpr, KL_TYPE: tl.constexpr, ADV_PER_ROW: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n_tokens
    _, d_loss, _, _ = _grpo_token_terms(offs, valid, T, logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, lo, hi, c,
                                        kl_coef, HAS_REF, KL_TYPE, ADV_PER_ROW)
    g = tl.load(dloss_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    tl.store(dlogp_ptr + offs, (g * d_loss).to(dlogp_ptr.dtype.element_ty), mask=valid)


def _check(logp, old_logp, adv, mask, ref_logp, kl_type):
    if logp.dim() != 2:
        raise ValueError(f"logp must be (N, T) (rows x completion tokens), got shape {tuple(logp.shape)}")
    N, T = logp.shape
    if old_logp.shape != (N, T) or mask.shape != (N, T) or (ref_logp is not None and ref_logp.shape != (N, T)):
        raise ValueError("logp, old_logp, mask (and ref_logp) must all be (N, T)")
    if adv.shape not in ((N,), (N, T)):
        raise ValueError(f"adv must be (N,) per sequence or (N, T) per token, got {tuple(adv.shape)} for N, T={N, T}")
    if kl_type not in KL_TYPES:
        raise ValueError(f"unknown KL estimator {kl_type!r}; use one of {sorted(KL_TYPES)}")


def _launch_args(logp, old_logp, adv, mask, ref_logp, eps_low, eps_high, clip_c, kl_coef, kl_type):
    N, T = logp.shape
    ins = [x.contiguous() for x in (logp, old_logp, ref_logp if ref_logp is not None else logp, adv)]
    ins.append(mask.contiguous().view(torch.int8) if mask.dtype == torch.bool else mask.contiguous())
    lo, hi, c = _clip_bounds(eps_low, eps_high, clip_c)
    consts = dict(HAS_REF=ref_logp is not None, KL_TYPE=KL_TYPES[kl_type], ADV_PER_ROW=adv.dim() == 1, BLOCK=BLOCK)
    return ins, (N * T, T, lo, hi, c, float(kl_coef)), consts, (triton.cdiv(N * T, BLOCK),)


def grpo_loss_fwd(*args):
    """Triton launcher: (token_loss, W, kl), each (N, T) fp32."""
    ins, scalars, consts, grid = _launch_args(*args)
    loss, W, kl = (torch.empty(args[0].shape, dtype=torch.float32, device=args[0].device) for _ in range(3))
    _grpo_loss_fwd_kernel[grid](*ins, loss, W, kl, *scalars, **consts)
    return loss, W, kl


def grpo_loss_bwd(dloss, *args):
    """Triton launcher: d token_loss / d logp times the upstream gradient, (N, T) in logp's dtype."""
    ins, scalars, consts, grid = _launch_args(*args)
    dlogp = torch.empty_like(ins[0])
    _grpo_loss_bwd_kernel[grid](dloss.contiguous(), *ins, dlogp, *scalars, **consts)
    return dlogp


class GRPOLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, old_logp, adv, mask, ref_logp, eps_low, eps_high, clip_c, kl_coef, kl_type):
        ctx.save_for_backward(logp, old_logp, adv, mask, ref_logp)
        ctx.hparams = (eps_low, eps_high, clip_c, kl_coef, kl_type)
        loss, W, kl = grpo_loss_fwd(logp, old_logp, adv, mask, ref_logp, eps_low, eps_high, clip_c, kl_coef, kl_type)
        ctx.mark_non_differentiable(W, kl)
        return loss, W, kl

    @staticmethod
    def backward(ctx, dloss, dW, dkl):
        logp, old_logp, adv, mask, ref_logp = ctx.saved_tensors
        dlogp = grpo_loss_bwd(dloss, logp, old_logp, adv, mask, ref_logp, *ctx.hparams)
        return dlogp, *([None] * 9)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, eps_low: float | None = 0.2, eps_high: float | None = 0.2,
              clip_c: float | None = 3.0, kl_coef: float = 0.0, kl_type: str = "k3"):
    """Per-token (token_loss, W, kl), each (N, T) fp32 and zero where mask is False; differentiable in logp only.
    adv is (N,) or (N, T); eps_low / eps_high / clip_c = None switch that clip off."""
    _check(logp, old_logp, adv, mask, ref_logp, kl_type)
    args = (logp, old_logp, adv, mask, ref_logp, eps_low, eps_high, clip_c, kl_coef, kl_type)
    if _use_triton(logp):
        return GRPOLossFn.apply(*args)
    return grpo_loss_ref(*args)
