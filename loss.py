"""RL core: advantage estimators and the policy loss (clipped surrogate + dual clip, KL to a reference, entropy);
and the pairwise preference loss of reward-free alignment (DPO, IPO) that dpo.py trains per objective.

References (exact formulas: spec/ctwa-reference.md §6-7, taken from verl `core_algos.py`):
- GRPO: Shao et al. 2024, DeepSeekMath, arXiv:2402.03300; mean-only variant Dr.GRPO, Liu et al. 2025, arXiv:2503.20783.
- REINFORCE++: Hu 2025, arXiv:2501.03262.   RLOO: Ahmadian et al. 2024, arXiv:2402.14740.
- PPO: Schulman et al. 2017, arXiv:1707.06347; dual clip: Ye et al. 2020, arXiv:1912.09729.
- KL estimators k1/k2/k3: Schulman 2020, "Approximating KL Divergence" (blog); k3 is verl's low_var_kl.
- DPO: Rafailov et al. 2023, arXiv:2305.18290.   IPO: Azar et al. 2023, arXiv:2310.12036 (as TRL's DPOTrainer).
Rows are prompt-major: row = prompt * G + g, so the G samples of a prompt are consecutive.
The per-token math (surrogate, KL, CTWA's clipped weight W) lives in kernels/grpo_loss.py; this file aggregates.

    python -m pytest -q tests/test_loss.py
"""
import torch
import torch.nn.functional as F

import kernels
from kernels.grpo_loss import kl_penalty  # noqa: F401  (public here: loss.kl_penalty is the one KL estimator)

ESTIMATORS = ("grpo", "reinforce_pp", "rloo", "reinforce")


def _groups(scores, group_size):
    if scores.dim() != 1 or group_size < 1 or scores.numel() % group_size:
        raise ValueError(f"scores must be (N,) with N a multiple of group_size={group_size}; got {tuple(scores.shape)}")
    return scores.view(-1, group_size)  # (P, G)


def grpo_advantages(scores: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO: (S_i - mean_g) / (std_g + 1e-6) with the unbiased group std; scale=False is Dr.GRPO's S_i - mean_g.
    A group of one has mean 0 and std 1 (as verl); a group of identical scores gives exactly 0."""
    s = _groups(scores, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(s), torch.ones_like(s)
    else:
        mean, std = s.mean(1, keepdim=True), s.std(1, keepdim=True)  # (P, 1), unbiased (G-1)
    adv = (s - mean) / (std + 1e-6) if scale else s - mean
    if group_size > 1:  # rounding in the mean could leave ~1e-17 / 1e-6 for identical scores: make it exactly 0
        adv = torch.where(s.amax(1, keepdim=True) == s.amin(1, keepdim=True), 0.0, adv)
    return adv.view(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: S_i minus the mean of the other G-1 samples of its prompt = G/(G-1) (S_i - mean_g)."""
    if group_size < 2:
        raise ValueError("RLOO needs group_size >= 2 (the baseline leaves the sample itself out)")
    s = _groups(scores, group_size)
    return ((s - s.mean(1, keepdim=True)) * group_size / (group_size - 1)).view(-1)


def reinforce_pp_advantages(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ (γ = 1): reward-to-go that resets after the response end, whitened over all valid tokens of
    the batch (token-weighted mean, unbiased variance, +1e-8 inside the sqrt), times mask. (N, T) -> (N, T)."""
    m = mask.to(token_rewards.dtype)
    n = m.sum()
    if n < 2:
        raise ValueError(f"REINFORCE++ whitening needs at least 2 valid tokens in the batch, got {int(n)}")
    # verl's scan is G = s_t + G; R_t = G; G *= m_t (t = T-1 .. 0), i.e. R_t sums s over [t, e_t] where e_t is the
    # last position before the next masked-out position after t. Vectorised: segments end where mask is 0.
    T = token_rewards.shape[1]
    seg = (1 - m).cumsum(1).long()  # (N, T) segment id: bumps at every masked-out position
    pos = torch.arange(T, device=m.device).expand_as(seg)
    end = seg.new_zeros(seg.shape[0], T + 1).scatter_reduce(1, seg, pos, "amax", include_self=False)  # (N, T+1)
    cs = token_rewards.cumsum(1)  # (N, T)
    returns = cs.gather(1, end.gather(1, seg)) - cs + token_rewards
    return _whiten(returns, m, n, mask.bool())


def _whiten(returns, weight, n, valid):
    """(returns - mean) / sqrt(var + 1e-8) over the n valid entries (weight = how many tokens each entry stands for):
    token-weighted mean, unbiased variance. Identical returns give exactly 0, not rounding noise of the mean."""
    mean = (returns * weight).sum() / (n + 1e-8)
    var = ((returns - mean).square() * weight).sum() / (n + 1e-8) * n / (n - 1)
    adv = (returns - mean) * torch.rsqrt(var + 1e-8) * (weight > 0)
    same = returns.masked_fill(~valid, float("-inf")).amax() == returns.masked_fill(~valid, float("inf")).amin()
    return torch.where(same, torch.zeros_like(adv), adv)


def reinforce_pp_outcome_advantages(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """REINFORCE++ for one outcome score per completion, in closed form: with the score on the last token and γ = 1
    every valid token's return is the score itself, so the token-level whitening of reinforce_pp_advantages is the
    length-weighted whitening of the scores. scores, lengths (N,) -> (N,), constant over each completion's tokens."""
    L = lengths.to(scores.dtype)
    if L.sum() < 2:
        raise ValueError(f"REINFORCE++ whitening needs at least 2 valid tokens in the batch, got {int(L.sum())}")
    return _whiten(scores, L, L.sum(), L > 0)


def advantages(scores: torch.Tensor, kind: str, group_size: int, lengths: torch.Tensor | None = None,
               scale: bool = True) -> torch.Tensor:
    """Per-completion advantages (N,) of outcome scores (N,) by estimator `kind` (ESTIMATORS): the rewards are outcome
    rewards, so every estimator's advantage is constant over a completion's tokens. lengths (N,) (tokens incl. EOS) are
    needed by reinforce_pp, which whitens over tokens; scale=False is Dr.GRPO (no std division)."""
    if kind == "grpo":
        return grpo_advantages(scores, group_size, scale)
    if kind == "rloo":
        return rloo_advantages(scores, group_size)
    if kind == "reinforce":  # plain REINFORCE with the batch-mean baseline
        return scores - scores.mean()
    if kind == "reinforce_pp":
        if lengths is None:
            raise ValueError("reinforce_pp advantages need the completion lengths (it whitens over tokens)")
        return reinforce_pp_outcome_advantages(scores, lengths)
    raise ValueError(f"unknown advantage estimator {kind!r}; use one of {ESTIMATORS}")


def token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ x·m / (Σ m + 1e-8) over the micro-batch: verl's token-mean (long answers weigh more)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / (m.sum() + 1e-8)


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                ref_logp: torch.Tensor | None = None, eps_low: float | None = 0.2, eps_high: float | None = 0.2,
                clip_c: float | None = 3.0, kl_coef: float = 0.0, kl_type: str = "k3",
                entropy: torch.Tensor | None = None, entropy_coef: float = 0.0):
    """PPO clipped surrogate (+ dual clip) + kl_coef·KL(π‖π_ref) - entropy_coef·entropy, token-mean.
    logp, old_logp, ref_logp, mask, entropy: (N, T); adv: (N,) per sequence or (N, T) per token.
    eps_low / eps_high / clip_c = None switch that clip off (all None: plain REINFORCE with importance ratio).
    Returns (loss, metrics {kl, clipfrac[, entropy]} of detached 0-dim tensors, W (N, T)), W = Â·ρ·1[unclipped] for
    CTWA (spec §8.3)."""
    if clip_c is not None and clip_c <= 1:
        raise ValueError(f"dual-clip constant clip_c must be > 1 (or None to switch it off), got {clip_c}")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp (log-probs of the frozen reference policy)")
    token_loss, W, kl = kernels.grpo_loss(logp, old_logp, adv, mask, ref_logp, eps_low, eps_high, clip_c, kl_coef,
                                          kl_type)
    loss = token_mean(token_loss, mask)
    with torch.no_grad():
        a = (adv.unsqueeze(1) if adv.dim() == 1 else adv).expand_as(W)  # (N, T)
        # W is zero exactly where the ε-clip is active (ρ > 0): verl's clip fraction without another pass
        clipped = mask.bool() & (a != 0) & (W == 0)
        metrics = {"kl": token_mean(kl, mask), "clipfrac": token_mean(clipped.float(), mask)}
    if entropy is not None:
        ent = token_mean(entropy.float(), mask)
        loss = loss - entropy_coef * ent
        metrics["entropy"] = ent.detach()
    return loss, metrics, W


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float, loss_type: str = "sigmoid"):
    """Per-pair preference losses (B,) from sequence log-probs (B,) (sums over completion tokens) of the chosen and
    rejected completions under the policy and the frozen reference, h = (pc - rc) - (pr - rr):
      sigmoid (DPO)  -log sigmoid(beta h): the Bradley-Terry likelihood of the implicit reward beta log(pi / ref);
      ipo            (h - 1 / (2 beta))^2, a squared margin that does not push h to infinity (TRL feeds it per-token
                     mean log-probs; the caller chooses).
    Returns (losses (B,), diagnostics of detached (B,) tensors: reward_chosen = beta (pc - rc), reward_rejected,
    margin = their difference, accuracy = 1[margin > 0]), TRL's rewards/* metrics before the batch mean."""
    chosen, rejected = policy_chosen_logps - ref_chosen_logps, policy_rejected_logps - ref_rejected_logps  # (B,)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen - rejected))
    elif loss_type == "ipo":
        losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; use 'sigmoid' or 'ipo'")
    with torch.no_grad():
        reward_chosen, reward_rejected = beta * chosen, beta * rejected
        margin = reward_chosen - reward_rejected
        metrics = {"reward_chosen": reward_chosen, "reward_rejected": reward_rejected, "margin": margin,
                   "accuracy": (margin > 0).to(margin.dtype)}
    return losses, metrics
