"""Every Triton kernel equals its eager reference, forward and backward, on odd shapes; references pass gradcheck.

conftest.py sets TRITON_INTERPRET=1, so on CPU the real kernels run through the Triton interpreter (tiny shapes).

    TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py
"""
import pytest
import torch

import kernels
from kernels.covariance import group_covariance_ref, group_moments_fwd, group_moments_ref
from kernels.grpo_loss import grpo_loss_ref
from kernels.logprobs import token_logprobs_ref

TOL = dict(rtol=1e-5, atol=1e-5)  # fp32 on CPU through the interpreter
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 kernels run on CUDA only")


def _grads(out, inputs, g):
    return torch.autograd.grad(list(out), inputs, list(g))


# ---------------------------------------------------------------- covariance


@pytest.mark.parametrize("P,G,K", [(3, 5, 3), (2, 1, 2), (2, 16, 3)])
def test_covariance_matches_reference(P, G, K):
    """Moments, covariance and its gradients equal the reference, with dropped rows and a group of < 2 kept."""
    gen = torch.Generator().manual_seed(P * G)
    u = torch.randint(0, 2, (P * G, K), generator=gen).float().requires_grad_()
    w = torch.randn(P * G, generator=gen).requires_grad_()
    keep = torch.rand(P * G, generator=gen) > 0.2
    keep[:G] = False
    keep[0] = True  # group 0 keeps one row: cov 0, invalid
    for a, b in zip(group_moments_fwd(u.detach(), w.detach(), G, keep), group_moments_ref(u, w, G, keep)):
        torch.testing.assert_close(a, b.detach(), **TOL)
    g = (torch.randn(P, K, generator=gen),)
    out, ref = kernels.group_covariance(u, w, G, keep), group_covariance_ref(u, w, G, keep)
    torch.testing.assert_close(out, ref, **TOL)
    assert torch.equal(out[0], torch.zeros(K))
    for a, b in zip(_grads([out], (u, w), g), _grads([ref], (u, w), g)):
        torch.testing.assert_close(a, b, **TOL)


def test_covariance_ignores_nonfinite_dropped_rows():
    """A dropped row holding NaN/inf (an outlier) does not leak into its group's statistics."""
    u, w = torch.tensor([[1.0], [0.0], [1.0], [1.0]]), torch.tensor([2.0, float("nan"), 0.0, 1.0])
    keep = torch.tensor([True, False, True, True])
    expect = group_covariance_ref(u[keep], w[keep], 3)
    torch.testing.assert_close(kernels.group_covariance(u, w, 4, keep), expect)
    torch.testing.assert_close(group_covariance_ref(u, w, 4, keep), expect)


def test_covariance_reference_gradcheck():
    """The covariance reference passes gradcheck in float64 (with a dropped row)."""
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([True, True, False, True, True, True])
    assert torch.autograd.gradcheck(lambda u, w: group_covariance_ref(u, w, 3, keep), (u, w))


def test_correlation_validity():
    """Constant objective or < 2 kept rows: cov 0 and correlation invalid; else Pearson's r of the group."""
    u = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    w = torch.tensor([0.5, -0.5, 1.0, 3.0, 1.0, 2.0])
    corr, valid = kernels.group_correlation(u, w, 3)
    cov = kernels.group_covariance(u, w, 3)
    assert cov[0, 1] == 0 and not valid[0, 1] and valid[0, 0] and valid[1].all()
    x, y = u[:3, 0], w[:3]
    r = ((x - x.mean()) * (y - y.mean())).mean() / (x.std(unbiased=False) * y.std(unbiased=False))
    torch.testing.assert_close(corr[0, 0], r)
    corr, valid = kernels.group_correlation(u, w, 3, keep=torch.tensor([1, 0, 0, 1, 1, 1], dtype=torch.bool))
    assert not valid[0].any() and torch.equal(corr[0], torch.zeros(2))


@pytest.mark.parametrize("eps,cov_mean,corr_mean", [
    (0.2, [0.129526, 0.162677, -0.071645], [0.294928, 0.66199, -0.151531]),
    (100.0, [0.19191, 0.230113, -0.115443], [0.38482, 0.640426, -0.231107]),
])
def test_covariance_spec_13_1(eps, cov_mean, corr_mean):
    """Per-group values reproduce compute_ctwa_stats (spec §13.1, w_agg=mean, per-group averaging)."""
    L = torch.tensor([4, 2, 3, 1, 4, 3, 2, 4])
    A = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.75, -0.25, -0.75, 0.5])
    delta = torch.tensor([[0.0, 0.3, -0.1, 0.2], [0.1, -0.3, 0, 0], [-0.2, 0, 0.25, 0], [0.4, 0, 0, 0],
                          [0, 0.1, 0.2, 0.3], [-0.1, -0.25, 0.05, 0], [0.3, -0.3, 0, 0], [0, 0, 0, 0.5]])
    u = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1.0]])
    mask = torch.arange(4)[None] < L[:, None]
    _, W, _ = kernels.grpo_loss(delta, torch.zeros(8, 4), A, mask, eps_low=eps, eps_high=eps)
    w = W.sum(1) / L  # w_agg = mean over all valid tokens
    cov = kernels.group_covariance(u, w, 4)
    corr, valid = kernels.group_correlation(u, w, 4)
    torch.testing.assert_close(cov.mean(0), torch.tensor(cov_mean), atol=1e-6, rtol=0)
    torch.testing.assert_close(corr.sum(0) / valid.sum(0).clamp(min=1), torch.tensor(corr_mean), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- grpo loss


def _loss_inputs(N, T, adv_per_token, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    old = -3 * torch.rand(N, T, generator=gen, dtype=dtype)
    logp = (old + 0.5 * torch.randn(N, T, generator=gen, dtype=dtype)).requires_grad_()
    ref = old + 0.5 * torch.randn(N, T, generator=gen, dtype=dtype)
    adv = torch.randn(*((N, T) if adv_per_token else (N,)), generator=gen, dtype=dtype)
    mask = torch.rand(N, T, generator=gen) > 0.3
    mask[1] = False  # an all-masked row
    mask[0, :3] = True
    old[0, 0] = logp[0, 0].detach() - 25  # ratio clamp at exp(20)
    ref[0, 1:3] = logp[0, 1:3].detach() + torch.tensor([-13.0, 25.0], dtype=dtype)  # k3 value and exponent clamps
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3"])
@pytest.mark.parametrize("adv_per_token", [False, True])
@pytest.mark.parametrize("clips", [(0.2, 0.28, 1.5), (None, None, None), (100.0, 100.0, 100.0)])
def test_grpo_loss_matches_reference(kl_type, adv_per_token, clips):
    """token_loss, W, kl and d token_loss / d logp equal the reference (N=5, T=7, an all-masked row)."""
    logp, old, ref, adv, mask = _loss_inputs(5, 7, adv_per_token, seed=len(kl_type) + adv_per_token)
    out = kernels.grpo_loss(logp, old, adv, mask, ref, *clips, kl_coef=0.3, kl_type=kl_type)
    expect = grpo_loss_ref(logp, old, adv, mask, ref, *clips, kl_coef=0.3, kl_type=kl_type)
    for a, b in zip(out, expect):
        torch.testing.assert_close(a, b, **TOL)
    g = torch.randn(5, 7)
    torch.testing.assert_close(*(torch.autograd.grad(o[0], logp, g)[0] for o in (out, expect)), **TOL)
    assert torch.equal(out[0][1], torch.zeros(7))


def test_grpo_loss_without_reference():
    """ref_logp=None: no KL term, kl is zero; the kernel still matches the reference."""
    logp, old, _, adv, mask = _loss_inputs(3, 9, False, seed=7)
    out, expect = kernels.grpo_loss(logp, old, adv, mask), grpo_loss_ref(logp, old, adv, mask)
    for a, b in zip(out, expect):
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(out[2], torch.zeros(3, 9))


def test_grpo_loss_reference_gradcheck():
    """The loss reference passes gradcheck in float64 for every KL type (clips on)."""
    logp, old, ref, adv, mask = _loss_inputs(3, 5, False, seed=3, dtype=torch.float64)
    for kl_type in ("k1", "k2", "k3"):
        f = lambda lp: grpo_loss_ref(lp, old, adv, mask, ref, kl_coef=0.5, kl_type=kl_type)[0]  # noqa: E731
        assert torch.autograd.gradcheck(f, (logp,))


def test_clipped_weight_uses_advantage_sign():
    """W = Â·ρ·1[ρ ≤ 1+ε_high] for Â ≥ 0 and Â·ρ·1[ρ ≥ 1-ε_low] for Â < 0 (spec §8.3)."""
    ratio = torch.tensor([[0.5, 0.9, 1.1, 1.5]] * 2)
    adv, mask = torch.tensor([2.0, -2.0]), torch.ones(2, 4, dtype=torch.bool)
    _, W, _ = kernels.grpo_loss(ratio.log(), torch.zeros(2, 4), adv, mask, eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(W, torch.tensor([[1.0, 1.8, 2.2, 0.0], [0.0, -1.8, -2.2, -3.0]]), **TOL)


@cuda
def test_grpo_loss_bf16_cuda():
    """bf16 inputs on CUDA: fp32 math matches the reference on the same bf16 values."""
    logp, old, ref, adv, mask = (x.cuda() for x in _loss_inputs(64, 333, False, seed=1))
    lp = logp.detach().bfloat16().requires_grad_()
    out = kernels.grpo_loss(lp, old, adv, mask, ref, kl_coef=0.1)
    expect = grpo_loss_ref(lp, old, adv, mask, ref, kl_coef=0.1)
    for a, b in zip(out, expect):
        torch.testing.assert_close(a, b, **TOL)
    g = torch.randn(64, 333, device="cuda")
    torch.testing.assert_close(*(torch.autograd.grad(o[0], lp, g)[0].float() for o in (out, expect)), **TOL)


# ---------------------------------------------------------------- log-probs


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.parametrize("chunk_rows,temperature,max_block", [(None, 1.0, 4096), (4, 0.7, 16)])
def test_logprobs_matches_reference(return_entropy, chunk_rows, temperature, max_block, monkeypatch):
    """log-probs (+ entropy) and grads w.r.t. hidden and weight equal the reference: N=3, T=5, C=6, V=37,
    one chunk or chunks of 4 rows, one V block or three (online logsumexp across blocks)."""
    monkeypatch.setattr("kernels.logprobs.MAX_BLOCK_V", max_block)
    gen = torch.Generator().manual_seed(chunk_rows or 0)
    hidden = torch.randn(3, 5, 6, generator=gen, requires_grad=True)
    weight = torch.randn(37, 6, generator=gen, requires_grad=True)
    targets = torch.randint(0, 37, (3, 5), generator=gen)
    out = kernels.token_logprobs(hidden, weight, targets, temperature, return_entropy, chunk_rows=chunk_rows)
    expect = token_logprobs_ref(hidden, weight, targets, temperature, return_entropy)
    out, expect = (out, expect) if return_entropy else ((out,), (expect,))
    for a, b in zip(out, expect):
        torch.testing.assert_close(a, b, **TOL)
    g = [torch.randn(3, 5, generator=gen) for _ in out]
    for a, b in zip(_grads(out, (hidden, weight), g), _grads(expect, (hidden, weight), g)):
        torch.testing.assert_close(a, b, **TOL)


def test_logprobs_frozen_weight():
    """A frozen LM head (no weight grad) still gives the hidden-state gradient."""
    hidden, weight = torch.randn(2, 3, 4, requires_grad=True), torch.randn(11, 4)
    targets = torch.randint(0, 11, (2, 3))
    g = torch.randn(2, 3)
    a = torch.autograd.grad(kernels.token_logprobs(hidden, weight, targets), hidden, g)[0]
    b = torch.autograd.grad(token_logprobs_ref(hidden, weight, targets), hidden, g)[0]
    torch.testing.assert_close(a, b, **TOL)


def test_logprobs_under_autocast():
    """bf16 hidden, fp32 head weight inside autocast (as train.py calls it): the backward, which runs outside
    autocast, recomputes the same bf16 logits; values and gradients match the reference, grads keep input dtypes."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 3, 8, generator=gen).bfloat16().requires_grad_()
    weight = torch.randn(37, 8, generator=gen, requires_grad=True)
    targets = torch.randint(0, 37, (2, 3), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expect = kernels.token_logprobs(hidden, weight, targets), token_logprobs_ref(hidden, weight, targets)
    torch.testing.assert_close(out, expect, **TOL)
    g = torch.randn(2, 3, generator=gen)
    (dh, dw), (rh, rw) = _grads([out], (hidden, weight), [g]), _grads([expect], (hidden, weight), [g])
    assert dh.dtype == torch.bfloat16 and dw.dtype == torch.float32
    torch.testing.assert_close(dh.float(), rh.float(), rtol=2e-2, atol=2e-2)  # bf16 d logits vs eager's fp32 path
    torch.testing.assert_close(dw, rw.float(), rtol=2e-2, atol=2e-2)


def test_logprobs_reference_gradcheck():
    """The log-prob reference (with entropy) passes gradcheck in float64."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 3), generator=gen)
    f = lambda h, w: token_logprobs_ref(h, w, targets, 0.8, return_entropy=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (hidden, weight))


def test_dispatch_without_interpreter(monkeypatch):
    """Without CUDA and without TRITON_INTERPRET=1 the public ops run the eager reference."""
    monkeypatch.delenv("TRITON_INTERPRET")
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    logp = kernels.token_logprobs(hidden, torch.randn(5, 4), torch.zeros(2, 3, dtype=torch.long))
    assert "TokenLogprobsFn" not in type(logp.grad_fn).__name__
    out = kernels.grpo_loss(logp, logp.detach(), torch.ones(2), torch.ones(2, 3, dtype=torch.bool))
    assert "GRPOLossFn" not in type(out[0].grad_fn).__name__


def test_bad_shapes_raise():
    """Shape errors name the expected layout."""
    with pytest.raises(ValueError, match="whole groups"):
        kernels.group_covariance(torch.zeros(5, 3), torch.zeros(5), 4)
    with pytest.raises(ValueError, match=r"hidden \(N, T, C\)"):
        kernels.token_logprobs(torch.zeros(2, 3, 4), torch.zeros(5, 3), torch.zeros(2, 3, dtype=torch.long))


@cuda
def test_logprobs_bf16_cuda():
    """bf16 on CUDA, V spanning several blocks: matches the reference up to bf16 logits rounding."""
    hidden = torch.randn(4, 77, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(10007, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 10007, (4, 77), device="cuda")
    out, expect = kernels.token_logprobs(hidden, weight, targets), token_logprobs_ref(hidden, weight, targets)
    torch.testing.assert_close(out, expect, rtol=1e-2, atol=1e-2)
    g = torch.randn(4, 77, device="cuda")
    for a, b in zip(_grads([out], (hidden, weight), [g]), _grads([expect], (hidden, weight), [g])):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)
