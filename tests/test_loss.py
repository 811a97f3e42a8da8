"""Advantage estimators, KL estimators and the policy loss (spec/ctwa-reference.md §6, §7, §13.3); the DPO loss.

    python -m pytest -q tests/test_loss.py
"""
import collections
import math
from types import SimpleNamespace

import pytest
import torch

import loss

SCORES = torch.tensor([1.0, 0.0, 0.667, 0.333])


def test_grpo_spec_vector():
    """GRPO on the spec §13.3 group: unbiased std 0.430418 and its advantages."""
    assert SCORES.std().item() == pytest.approx(0.430418, abs=1e-6)
    adv = loss.grpo_advantages(SCORES, 4)
    torch.testing.assert_close(adv, torch.tensor([1.16166, -1.16166, 0.387994, -0.387994]), atol=1e-5, rtol=0)


def test_grpo_hand_cases():
    """Two groups, Dr.GRPO mean-only, G=1 (mean 0, std 1 as verl), identical scores give exactly 0, not NaN."""
    s = torch.tensor([1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = loss.grpo_advantages(s, 3)
    mean, std = 1.0, 1.0  # first group [1, 0, 2]: unbiased std 1
    torch.testing.assert_close(adv[:3], (s[:3] - mean) / (std + 1e-6))
    assert torch.equal(adv[3:], torch.zeros(3))
    torch.testing.assert_close(loss.grpo_advantages(s, 3, scale=False), torch.tensor([0.0, -1.0, 1.0, 0, 0, 0]))
    torch.testing.assert_close(loss.grpo_advantages(SCORES, 1), SCORES / (1 + 1e-6))
    same = loss.grpo_advantages(torch.full((8,), 0.1), 4)  # 0.1 is not exact in binary: the mean rounds
    assert torch.equal(same, torch.zeros(8))
    with pytest.raises(ValueError, match="multiple of group_size"):
        loss.grpo_advantages(torch.zeros(5), 4)


def test_rloo_and_reinforce():
    """RLOO subtracts the mean of the other samples; REINFORCE subtracts the batch mean; loss.advantages dispatches."""
    s = torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0, 2.0])
    torch.testing.assert_close(loss.rloo_advantages(s, 3), torch.tensor([1.0, -0.5, -0.5, 1.5, -1.5, 0.0]))
    torch.testing.assert_close(loss.advantages(s, "rloo", 3), loss.rloo_advantages(s, 3))
    torch.testing.assert_close(loss.advantages(s, "reinforce", 3), s - 7 / 6)
    torch.testing.assert_close(loss.advantages(s, "grpo", 3, scale=False), loss.grpo_advantages(s, 3, scale=False))
    with pytest.raises(ValueError, match="group_size >= 2"):
        loss.rloo_advantages(s, 1)
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        loss.advantages(s, "ppo", 3)
    with pytest.raises(ValueError, match="need the completion lengths"):
        loss.advantages(s, "reinforce_pp", 3)


def test_reinforce_pp_spec_vector():
    """REINFORCE++ on spec §13.3: lengths [5, 3, 4, 2], scores at the last token, whitened over valid tokens."""
    L = torch.tensor([5, 3, 4, 2])
    mask = torch.arange(7)[None] < L[:, None]  # (4, 7) right-padded
    r = torch.zeros(4, 7)
    r[torch.arange(4), L - 1] = SCORES
    adv = loss.reinforce_pp_advantages(r, mask)
    expect = torch.tensor([1.021601, -1.502652, 0.181025, -0.662075])
    torch.testing.assert_close(adv, expect[:, None] * mask, atol=1e-5, rtol=0)
    same = torch.zeros(4, 7)
    same[torch.arange(4), L - 1] = 0.1  # every completion scores 0.1: exactly zero advantages, not noise or NaN
    assert torch.equal(loss.reinforce_pp_advantages(same, mask), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="at least 2 valid tokens"):
        loss.reinforce_pp_advantages(r, torch.zeros_like(mask))


def test_reinforce_pp_closed_form_equals_token_path():
    """One outcome score per completion: the closed form equals the per-token estimator's (constant) row value, on
    random batches, with a completion that has no tokens and with identical scores (exactly 0)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        N, T = 24, 13
        lengths = torch.randint(0 if trial % 5 == 0 else 1, T + 1, (N,), generator=g)
        lengths[0] = T
        scores = torch.rand(N, generator=g, dtype=torch.float64).round(decimals=1)
        mask = torch.arange(T)[None] < lengths[:, None]  # (N, T)
        token_rewards = torch.zeros(N, T, dtype=torch.float64)
        token_rewards[torch.arange(N), (lengths - 1).clamp(min=0)] = scores * (lengths > 0)
        per_token = loss.reinforce_pp_advantages(token_rewards, mask)  # (N, T), constant over each row's tokens
        closed = loss.advantages(scores, "reinforce_pp", 4, lengths)  # (N,)
        torch.testing.assert_close(per_token, closed[:, None] * mask, atol=1e-12, rtol=0)
    S = torch.tensor([1.0, 0.0, 0.667, 0.333])
    L = torch.tensor([5, 3, 4, 2])
    expect = torch.tensor([1.021601, -1.502652, 0.181025, -0.662075])  # spec §13.3, as the token path
    torch.testing.assert_close(loss.reinforce_pp_outcome_advantages(S, L), expect, atol=1e-5, rtol=0)
    assert torch.equal(loss.reinforce_pp_outcome_advantages(torch.full((4,), 0.1), L), torch.zeros(4))


def test_reinforce_pp_matches_verl_scan():
    """The vectorised returns equal verl's backward scan with reset (rewards on any token, masks with holes)."""
    g = torch.Generator().manual_seed(0)
    N, T = 5, 9
    r = torch.randn(N, T, generator=g, dtype=torch.float64)
    mask = torch.rand(N, T, generator=g) > 0.3
    mask[1] = False
    returns, acc = torch.zeros(N, T, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    for t in reversed(range(T)):  # verl compute_reinforce_plus_plus_outcome_advantage, gamma = 1
        acc = r[:, t] + acc
        returns[:, t] = acc
        acc = acc * mask[:, t]
    m = mask.double()
    mean = (returns * m).sum() / (m.sum() + 1e-8)
    var = ((returns - mean) ** 2 * m).sum() / (m.sum() + 1e-8) * m.sum() / (m.sum() - 1)
    torch.testing.assert_close(loss.reinforce_pp_advantages(r, mask), (returns - mean) * torch.rsqrt(var + 1e-8) * m)


def test_low_var_kl_spec_vector():
    """k3 (low_var_kl) on the spec §13.3 pairs, and its clamp at 10."""
    logp, ref = torch.tensor([-1.0, -2.0, -0.5, 0.0]), torch.tensor([-1.2, -1.5, -0.5, -30.0])
    kl = loss.kl_penalty(logp, ref, "k3")
    torch.testing.assert_close(kl, torch.tensor([0.018731, 0.148721, 0.0, 10.0]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="unknown KL"):
        loss.kl_penalty(logp, ref, "k4")


def test_kl_estimators_exact_expectations():
    """Exact expectations over a 5-token vocabulary, samples x ~ π weighted by π(x) (no sampling noise):
    values: E[k1] = E[k3] = KL(π‖π_ref), E[k2] = ½ E[(log π/π_ref)²];
    gradients of the sample-average loss (through log π(x) only, x fixed, as in training):
    E[∇k1] = 0, E[∇k2] = ∇ KL(π‖π_ref) (reverse KL), E[∇k3] = ∇ KL(π_ref‖π) (forward KL)."""
    theta = torch.tensor([0.3, -1.0, 0.5, 1.2, -0.2], dtype=torch.float64, requires_grad=True)
    ref_logp = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.15], dtype=torch.float64).log()
    logp = theta.log_softmax(0)
    pi = logp.exp().detach()  # sampling distribution: a weight, not differentiated (no score-function term)
    rev_kl = (logp.exp() * (logp - ref_logp)).sum()
    fwd_kl = (ref_logp.exp() * (ref_logp - logp)).sum()
    grad = lambda f: torch.autograd.grad(f, theta, retain_graph=True)[0]  # noqa: E731
    expect = {k: (pi * loss.kl_penalty(logp, ref_logp, k)).sum() for k in ("k1", "k2", "k3")}
    torch.testing.assert_close(expect["k1"], rev_kl)
    torch.testing.assert_close(expect["k3"], rev_kl)
    torch.testing.assert_close(expect["k2"], 0.5 * (pi * (logp - ref_logp) ** 2).sum())
    torch.testing.assert_close(grad(expect["k1"]), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(grad(expect["k2"]), grad(rev_kl))
    torch.testing.assert_close(grad(expect["k3"]), grad(fwd_kl))


def _batch(N=5, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(N, T, generator=g) * 3
    logp = (old + 0.4 * torch.randn(N, T, generator=g)).requires_grad_()
    ref = old + 0.3 * torch.randn(N, T, generator=g)
    mask = torch.rand(N, T, generator=g) > 0.25
    mask[-1] = False  # an all-masked row
    return logp, old, ref, torch.randn(N, generator=g), mask


def test_policy_loss_on_policy_reinforce():
    """Clipping off and logp == old: loss = -token-mean(A), gradient -A/Σm on each valid token, W = A."""
    _, old, _, adv, mask = _batch()
    logp = old.clone().requires_grad_()
    out, metrics, W = loss.policy_loss(logp, old, adv, mask, eps_low=None, eps_high=None, clip_c=None)
    A = adv[:, None].expand_as(mask) * mask
    torch.testing.assert_close(out, -A.sum() / mask.sum())
    out.backward()
    torch.testing.assert_close(logp.grad, -A / mask.sum())
    torch.testing.assert_close(W, A)
    assert metrics["clipfrac"] == 0 and set(metrics) == {"kl", "clipfrac"}


def test_policy_loss_matches_verl_formulas():
    """Loss, KL, entropy bonus, clip fraction and W equal verl's per-token formulas aggregated by hand."""
    logp, old, ref, adv, mask = _batch(seed=1)
    ent = torch.rand(mask.shape)
    out, metrics, W = loss.policy_loss(logp, old, adv, mask, ref, eps_low=0.2, eps_high=0.28, clip_c=1.5,
                                       kl_coef=0.1, kl_type="k3", entropy=ent, entropy_coef=0.01)
    A, m = adv[:, None], mask.float()
    ratio = (logp.detach() - old).exp()
    pg1, pg2 = -A * ratio, -A * ratio.clamp(0.8, 1.28)
    pgc = torch.maximum(pg1, pg2)
    pg = torch.where(A < 0, torch.minimum(-A * 1.5, pgc), pgc)
    tm = lambda x: (x * m).sum() / m.sum()  # noqa: E731
    kl = loss.kl_penalty(logp.detach(), ref, "k3")
    torch.testing.assert_close(out, tm(pg) + 0.1 * tm(kl) - 0.01 * tm(ent))
    torch.testing.assert_close(metrics["kl"], tm(kl))
    torch.testing.assert_close(metrics["entropy"], tm(ent))
    torch.testing.assert_close(metrics["clipfrac"], tm((pg2 > pg1).float()))
    assert 0 < metrics["clipfrac"] < 1 and ((pgc > -A * 1.5) & (A < 0) & mask).any()  # clip and dual clip act
    unclipped = torch.where(A >= 0, ratio <= 1.28, ratio >= 0.8)
    torch.testing.assert_close(W, A * ratio * unclipped * m)


def test_policy_loss_bad_input():
    """Clear errors: KL without a reference, dual clip <= 1, wrong advantage shape."""
    logp, old, ref, adv, mask = _batch()
    with pytest.raises(ValueError, match="needs ref_logp"):
        loss.policy_loss(logp, old, adv, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="clip_c must be > 1"):
        loss.policy_loss(logp, old, adv, mask, clip_c=1.0)
    with pytest.raises(ValueError, match="adv must be"):
        loss.policy_loss(logp, old, adv[:3], mask)


def _pairs(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    policy = (-20 * torch.rand(2, B, generator=g, dtype=torch.float64)).requires_grad_()
    ref = policy.detach() + torch.randn(2, B, generator=g, dtype=torch.float64)
    return policy, ref


def test_dpo_loss_by_hand():
    """DPO: log 2 at the reference, -log sigmoid(beta h) and its gradient -beta sigmoid(-beta h) on the chosen
    log-prob; the diagnostics; IPO's squared margin; an unknown type is an error."""
    policy, ref = _pairs()
    losses, m = loss.dpo_loss(policy[0], policy[1], policy[0].detach(), policy[1].detach(), beta=0.1)
    torch.testing.assert_close(losses, torch.full((6,), math.log(2), dtype=torch.float64))
    losses, m = loss.dpo_loss(policy[0], policy[1], ref[0], ref[1], beta=0.5)
    h = (policy[0] - ref[0]) - (policy[1] - ref[1])
    torch.testing.assert_close(losses, torch.log1p(torch.exp(-0.5 * h)))
    losses.sum().backward()
    torch.testing.assert_close(policy.grad[0], -0.5 * torch.sigmoid(-0.5 * h.detach()))
    torch.testing.assert_close(policy.grad[1], 0.5 * torch.sigmoid(-0.5 * h.detach()))
    torch.testing.assert_close(m["margin"], 0.5 * h.detach())
    torch.testing.assert_close(m["reward_chosen"] - m["reward_rejected"], m["margin"])
    assert torch.equal(m["accuracy"], (h > 0).double()) and 0 < m["accuracy"].mean() < 1
    ipo, _ = loss.dpo_loss(policy[0], policy[1], ref[0], ref[1], beta=0.5, loss_type="ipo")
    torch.testing.assert_close(ipo, (h - 1.0) ** 2)
    with pytest.raises(ValueError, match="unknown DPO loss_type 'hinge'"):
        loss.dpo_loss(policy[0], policy[1], ref[0], ref[1], 0.1, "hinge")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_equals_trl(loss_type):
    """loss.dpo_loss equals TRL's DPOTrainer._compute_loss (trl 1.16, which has no standalone loss function) on fixed
    sequence log-probs: the loss and the rewards/* metrics. TRL runs unchanged on a stand-in trainer and model that
    return the given per-token log-probs; its IPO averages over completion tokens, so ours gets the per-token means."""
    trl = pytest.importorskip("trl")
    B, T, beta = 5, 7, 0.2
    g = torch.Generator().manual_seed(1)
    token_logps = -torch.rand(2 * B, T - 1, generator=g) * 2  # rows: B chosen, then B rejected
    lengths = torch.randint(1, T, (2 * B,), generator=g)
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # TRL's IPO counts these tokens
    ref = token_logps.sum(1) + torch.randn(2 * B, generator=g)  # (2B,) reference sequence log-probs
    zeros = torch.zeros(2 * B, T - 1)
    outputs = SimpleNamespace(log_probs=token_logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    accelerator = SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False,
                              ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                              loss_types=[loss_type], loss_weights=[1.0], beta=beta, use_weighting=False,
                              _metrics={"train": collections.defaultdict(list)}, _tp_size=1,
                              _total_train_tokens=0)
    inputs = dict(input_ids=torch.zeros(2 * B, T, dtype=torch.long), attention_mask=torch.ones(2 * B, T),
                  completion_mask=completion_mask, ref_chosen_logps=ref[:B], ref_rejected_logps=ref[B:])
    expected = trl.DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, return_outputs=False)
    seq, ref_seq = token_logps.sum(1), ref
    if loss_type == "ipo":
        seq, ref_seq = seq / lengths, ref / lengths
    losses, m = loss.dpo_loss(seq[:B], seq[B:], ref_seq[:B], ref_seq[B:], beta, loss_type)
    torch.testing.assert_close(losses.mean(), expected)
    if loss_type == "sigmoid":  # TRL's metrics are of the unnormalised log-ratios, like ours for DPO
        logged = trainer._metrics["train"]
        for ours, theirs in (("reward_chosen", "rewards/chosen"), ("reward_rejected", "rewards/rejected"),
                             ("margin", "rewards/margins"), ("accuracy", "rewards/accuracies")):
            assert m[ours].mean().item() == pytest.approx(logged[theirs][0], rel=1e-6), ours
