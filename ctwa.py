"""CTWA (covariance-targeted weight adaptation) and the covariance law it rests on, as runnable code.

Lu & Jiang 2026, "Uncovering Cross-Objective Interference in Multi-Objective Alignment", arXiv 2602.06869 (§4, §5,
App. C); official code yining610/ctwa (compute_ctwa_stats, _ctwa_update_weights_from_metrics).

The law (Thm 4.2): a KL-regularised step of size eta on a scalar score s changes objective k by
eta Cov_pi(r_k, s) + O(eta^2), so k improves at first order only if its reward covaries positively with the score.
Under a clipped PPO/GRPO update the per-completion quantity that moves the policy is the clipped advantage weight
W = A rho 1[unclipped] (Cor. C.4). CTWA therefore measures after every update, within each prompt, the covariance
of every objective's reward with the completion-level w, averages it over prompts, and raises the scalarization
weight omega_k of every objective whose covariance lags its target:

    w_i  = mean_t A_i rho_it 1[unclipped_it]            completion weight under the updated policy
    v_k  = mean over prompts of Cov(r_k, w)              (after dropping |w| > 100 x median |w|)
    e    = v (first step) or (1 - tau) e + tau v         EMA, tau = 0.1
    d_k  = relu(c*_k - e_k) 1[mean r_k < o*_k]           deficit, gated by the objective targets
    log omega_k += lambda d_k                            weights of the next step's s = sum_k omega_k r_k

We compute the statistic over all completions of every prompt (the paper); the official 4-GPU run used rank 0's
length-balanced quarter of the batch. The 100x-median outlier filter and the objective-target gate are the official
code's, not in the paper's text (outlier=inf and obj_targets=None turn them off).

Run:  python ctwa.py  (the covariance law as a short lesson);  python -m pytest -q tests/test_ctwa.py
"""
import math

import torch

import kernels
import scalarize

F64 = torch.float64


def completion_weights(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                       eps_low: float | None = 0.2, eps_high: float | None = 0.2, w_agg: str = "mean"):
    """Completion-level clipped advantage weight w (N,) and the unclipped token fraction (spec §8.4 steps 1-6).
    new_logp (post-update), old_logp, mask: (N, T); adv: (N,) or (N, T). eps None = that side never clips."""
    m = mask.float()
    L = m.sum(1).clamp(min=1)  # (N,) valid tokens
    A = adv.float() if adv.dim() == 1 else (adv.float() * m).sum(1) / L  # (N,) sequence advantage
    rho = (new_logp.float() - old_logp.float()).clamp(-20, 20).exp()  # (N, T)
    hi, lo = math.inf if eps_high is None else 1 + eps_high, -math.inf if eps_low is None else 1 - eps_low
    # the active branch of the PPO min depends on the sign of the completion's advantage, not of the token's
    unclipped = torch.where(A[:, None] >= 0, rho <= hi, rho >= lo) * m  # (N, T)
    W = A[:, None] * rho * unclipped  # (N, T)
    if w_agg == "mean":  # clipped tokens count as 0 over all valid tokens (the paper's run)
        w = W.sum(1) / L
    elif w_agg == "mean_unclipped":
        w = W.sum(1) / (unclipped.sum(1) + 1e-8)
    elif w_agg == "sum":
        w = W.sum(1)
    else:
        raise ValueError(f"w_agg must be one of mean, mean_unclipped, sum; got {w_agg!r}")
    return w, float(unclipped.sum() / m.sum().clamp(min=1))


@torch.no_grad()
def covariance_statistic(rewards: torch.Tensor, w: torch.Tensor, group_size: int, outlier: float = 100.0) -> dict:
    """Cov(r_k, w) and Corr(r_k, w) within each prompt, averaged over prompts (spec §8.4 steps 7-10), for any method:
    {"cov": (K,), "corr": (K,), "w_mean", "w_std", "n_groups"}. Rows are prompt-major (row = prompt * G + g). Rows
    with non-finite w or |w| > outlier * median|w| are dropped; cov averages over groups with >= 2 kept rows, corr
    over the groups where it is defined."""
    if rewards.dim() != 2 or w.shape != (rewards.shape[0],) or rewards.shape[0] % group_size:
        raise ValueError(f"need rewards (N, K), w (N,) and N divisible by group_size={group_size}; "
                         f"got {tuple(rewards.shape)} and {tuple(w.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; fix the reward function")
    w = w.float()
    keep = torch.isfinite(w)
    if keep.any():
        med = torch.quantile(w[keep].abs(), 0.5)  # interpolated median, as numpy's
        if med > 0:
            keep &= w.abs() <= outlier * med
    used = keep.view(-1, group_size).sum(1) >= 2  # (P,)
    n_groups = int(used.sum())
    cov = kernels.group_covariance(rewards.float(), w, group_size, keep)  # (P, K), 0 for groups with < 2 rows
    corr, valid = kernels.group_correlation(rewards.float(), w, group_size, keep)  # (P, K) each
    kept = w[keep]
    # a group where r_k is constant counts as 0 toward cov (official), but is left out of corr's average
    return {"cov": cov.sum(0) / max(n_groups, 1), "corr": (corr * valid).sum(0) / valid.sum(0).clamp(min=1),
            "w_mean": float(kept.mean()) if kept.numel() else 0.0,
            "w_std": float(kept.std(correction=0)) if kept.numel() else 0.0, "n_groups": n_groups}


def probe_value(seq_logp: torch.Tensor, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """The policy's expected reward on a fixed probe set, per objective (K,): each probe prompt has `group_size` scored
    candidate completions (rows prompt-major) with sequence log-probs seq_logp (N,) under the policy; the policy's
    probability renormalised over a prompt's candidates weighs their rewards (N, K); mean over prompts. Teacher-forced
    and exact, so its change across one step is the realised change of each objective, step by step."""
    p = torch.softmax(seq_logp.double().view(-1, group_size), dim=1)  # (P, G)
    return (p.unsqueeze(-1) * rewards.double().view(p.shape[0], group_size, -1)).sum(1).mean(0)  # (K,)


class CTWA(scalarize.Method):
    """Reward-level s = sum_k w_k r_k whose weights grow in log space while the EMA of Cov(r_k, w_clip) is below its
    target (Lu & Jiang 2026, §5): log w += lambda relu(c* - e) 1[mean r < o*]. K is num_objectives, else the length of
    the first vector given (init_weights, cov_targets, obj_targets). The paper's targets (0.15 accuracy, 0.08 the
    others) and objective targets (1.0, then 0.95) generalise to any K as "the first objective, then the rest"."""
    name, clipped = "ctwa", False  # the paper's CTWA run is REINFORCE++ without clipping
    # the paper's run (its official script: init 0.333/0.333/0.334, where the paper says equal weights)
    PAPER_RUN = {"init_weights": [0.333, 0.333, 0.334], "cov_targets": [0.15, 0.08, 0.08],
                 "obj_targets": [1.0, 0.95, 0.95]}
    HELP = {"init_weights": "initial weights, K floats (default uniform 1/K, the paper's 1/3 each)",
            "cov_targets": "covariance targets c*, K floats (default: the paper's 0.15 first objective, 0.08 the rest)",
            "lambda_lr": "step lambda on the log-weights", "ema_tau": "EMA rate tau of the covariance",
            "obj_targets": "freeze w_k once the batch mean of r_k reaches o*_k, K floats (default 1.0 first, 0.95 the "
                           "rest, the official code's; inf = never freeze)",
            "signal": "what CTWA targets: cov (the paper's Cov(r_k, w_clip)) | corr (the correlation) | grad (the "
                      "cosine of objective k's policy gradient with the update the optimizer made, beyond the paper)",
            "w_agg": "completion weight from token weights: mean | mean_unclipped | sum"}
    LOGGED = {"weight": "weights", "ema": "ema", "deficit": "deficit"}
    _state = ("log_w", "ema", "deficit")

    def __init__(self, init_weights=None, cov_targets=None, lambda_lr=0.05, ema_tau=0.1, obj_targets=None,
                 num_objectives=None, signal="cov", w_agg="mean"):
        given = [v for v in (init_weights, cov_targets, obj_targets) if v is not None and torch.as_tensor(v).dim()]
        if num_objectives is None and not given:
            raise ValueError("CTWA cannot tell the number of objectives: pass num_objectives or K init_weights")
        super().__init__(num_objectives or len(torch.as_tensor(given[0]).flatten()))
        K = self.K
        w0 = scalarize.vector(1 / K if init_weights is None else init_weights, K, "init_weights",
                              self._flag("init_weights"), nonneg=True)
        if not w0.sum() > 0:
            raise ValueError(f"init_weights must have a positive sum, got {w0.tolist()} ({self._flag('init_weights')})")
        self.log_w = w0.clamp(min=1e-8).log()
        first_then_rest = lambda first, rest: [first] + [rest] * (K - 1)  # noqa: E731
        self.cov_targets = scalarize.vector(first_then_rest(0.15, 0.08) if cov_targets is None else cov_targets, K,
                                            "cov_targets", self._flag("cov_targets"))
        self.obj_targets = scalarize.vector(first_then_rest(1.0, 0.95) if obj_targets is None else obj_targets, K,
                                            "obj_targets", self._flag("obj_targets"), finite=False)
        self.needs_statistic = scalarize.choice(signal, ("cov", "corr", "grad"), self._flag("signal"))
        self.w_agg = scalarize.choice(w_agg, ("mean", "mean_unclipped", "sum"), self._flag("w_agg"))
        self.lambda_lr, self.ema_tau = float(lambda_lr), float(ema_tau)
        self.ema, self.deficit = None, torch.zeros(K, dtype=F64)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_w.exp()

    def scalarize(self, rewards):
        r = scalarize.matrix(rewards, self.K, "rewards")
        return r @ self.weights.to(r)  # (N,)

    def update(self, statistic, objective_means):
        """statistic (K,): this step's prompt-averaged Cov(r_k, w) (Corr for signal="corr", the gradient cosine for
        signal="grad"); objective_means (K,): batch means of r_k."""
        v, means = scalarize.usable_vector(statistic, self.K), scalarize.usable_vector(objective_means, self.K)
        if v is None or means is None:
            return self._skip(f"statistic {statistic} or objective means {objective_means} are not {self.K} finite "
                              "values")
        self.ema = v.clone() if self.ema is None else (1 - self.ema_tau) * self.ema + self.ema_tau * v
        self.deficit = (self.cov_targets - self.ema).clamp(min=0) * (means < self.obj_targets)
        # no renormalisation: weights only grow, and group-normalised or whitened advantages see only their ratios
        self.log_w = self.log_w + self.lambda_lr * self.deficit

    def metrics(self) -> dict:
        return {**super().metrics(), "weight_sum": float(self.weights.sum())}


# ----------------------------------------------------------------------------------------------------------------
# The covariance law on a toy where everything is exact (paper §4 and App. C.3): a categorical policy pi over n
# completions y with reward vectors R (n, K) and a scalar score s (n,), e.g. s = R @ w. No sampling anywhere.

def covariance(pi: torch.Tensor, R: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Cov_pi(r_k, s) for every column of R (n, K) or for a single vector R (n,)."""
    Rc = R - pi @ R
    return pi @ (Rc * (s - pi @ s)[:, None]) if R.dim() == 2 else pi @ (Rc * (s - pi @ s))


def kl_step(pi: torch.Tensor, s: torch.Tensor, eta: float) -> torch.Tensor:
    """Lemma 4.1: argmax_p E_p[s] - KL(p || pi) / eta is the exponential tilt p ∝ pi exp(eta s)."""
    return torch.softmax(pi.log() + eta * s, 0)


def natural_gradient_step(logits: torch.Tensor, s: torch.Tensor, eta: float) -> torch.Tensor:
    """Cor. C.3: z <- z + eta v, v a solution of F v = grad_z E_pi[s] with F = diag(pi) - pi pi^T the categorical
    Fisher (singular along 1, so we take the least-squares solution); the step equals the KL step's tilt."""
    pi = torch.softmax(logits, 0)
    F = torch.diag(pi) - torch.outer(pi, pi)  # (n, n)
    grad = pi * (s - pi @ s)  # d E_pi[s] / d z
    return logits + eta * torch.linalg.lstsq(F, grad[:, None]).solution[:, 0]


def first_order_check(pi: torch.Tensor, R: torch.Tensor, s: torch.Tensor, eta: float):
    """(realised change of every objective E[r_k] after one KL step, the law's prediction eta Cov_pi(r_k, s))."""
    return (kl_step(pi, s, eta) - pi) @ R, eta * covariance(pi, R, s)


def two_mode(p_bad=0.2, s_good=0.3, s_bad=0.7, r_good=1.0, r_bad=0.0, eta=1.0, steps=10):
    """§4.2: two completions; the score ranks the bad mode higher (s_bad > s_good) while objective k prefers the good
    one (r_good > r_bad). Per step (P(bad), J_k = E[r_k], Cov(r_k, s)): the log-odds of bad grow by eta (s_bad -
    s_good), so J_k falls monotonically while Cov = p (1 - p)(s_bad - s_good)(r_bad - r_good) < 0 (eq. 5)."""
    pi, s, r = (torch.tensor(v, dtype=F64) for v in ([1 - p_bad, p_bad], [s_good, s_bad], [r_good, r_bad]))
    rows = []
    for _ in range(steps + 1):
        rows.append((float(pi[1]), float(pi @ r), float(covariance(pi, r, s))))
        pi = kl_step(pi, s, eta)
    return rows


def lesson():
    """Print the covariance law on a 6-completion, 3-objective toy, then the two-mode example."""
    # accuracy, conciseness, clarity of six canned completions: the short clear ones are often wrong
    R = torch.tensor([[1, 0, 0], [1, 0, 1], [0, 1, 1], [0, 1, 1], [0, 1, 0], [1, 1, 1]], dtype=F64)
    pi = torch.tensor([0.25, 0.15, 0.2, 0.2, 0.1, 0.1], dtype=F64)
    for w in ([1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2]):
        s = R @ torch.tensor(w, dtype=F64)
        print(f"weights {w[0]:.2f} {w[1]:.2f} {w[2]:.2f}: Cov_pi(r_k, s) = {covariance(pi, R, s).numpy().round(4)}")
        for eta in (0.4, 0.2, 0.1):
            real, pred = first_order_check(pi, R, s, eta)
            print(f"  eta {eta:.1f}: realised dJ {real.numpy().round(5)}  predicted eta*Cov {pred.numpy().round(5)}"
                  f"  |error| {(real - pred).abs().max():.2e}")
    print("the error is O(eta^2): error / eta halves with eta. Raising w_k by dw raises Cov(r_k, s) by dw Var(r_k),\n"
          "the lever CTWA pulls while Cov(r_k, w_clip) is below its target (compare the two weight vectors above)")
    z = torch.randn(6, dtype=F64)
    gap = (torch.softmax(natural_gradient_step(z, s, 0.3), 0) - kl_step(torch.softmax(z, 0), s, 0.3)).abs().max()
    print(f"natural-gradient step (Cor. C.3) vs KL step (Lemma 4.1): max |difference| in pi' = {gap:.1e}")
    print("\ntwo-mode example (§4.2): the score favours the mode that objective k dislikes")
    print("step  P(bad)  J_k    Cov(r_k, s)")
    for t, (p, J, c) in enumerate(two_mode()):
        print(f"{t:4d}  {p:.3f}   {J:.3f}  {c:+.4f}")


if __name__ == "__main__":
    lesson()
