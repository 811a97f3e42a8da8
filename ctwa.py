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
import warnings

import torch

import kernels

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
def covariance_statistic(rewards: torch.Tensor, w: torch.Tensor, group_size: int, use_corr: bool = False,
                         outlier: float = 100.0) -> dict:
    """Cov(r_k, w) and Corr(r_k, w) within each prompt, averaged over prompts (spec §8.4 steps 7-10), for any method.
    Rows are prompt-major (row = prompt * G + g). Rows with non-finite w or |w| > outlier * median|w| are dropped; cov
    averages over groups with >= 2 kept rows, corr over the groups where it is defined. "signal" is what CTWA uses."""
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
    # a group where r_k is constant counts as 0 toward cov (official), but is left out of corr's average
    cov_mean = cov.sum(0) / max(n_groups, 1)
    corr_mean = (corr * valid).sum(0) / valid.sum(0).clamp(min=1)
    kept = w[keep]
    return {"cov_mean": cov_mean, "corr_mean": corr_mean, "signal": corr_mean if use_corr else cov_mean,
            "w_mean": float(kept.mean()) if kept.numel() else 0.0,
            "w_std": float(kept.std(correction=0)) if kept.numel() else 0.0, "n_groups": n_groups}


def _vector(values, K, what, flag):
    v = torch.as_tensor(values, dtype=F64).to("cpu").flatten()
    v = v.expand(K).clone() if v.numel() == 1 else v
    if v.numel() != K:
        raise ValueError(f"{what} has {v.numel()} entries, expected {K}; pass {K} values ({flag})")
    if torch.isnan(v).any():
        raise ValueError(f"{what} contains NaN: {v.tolist()} ({flag})")
    return v


class CTWA:
    """Reward-level s = sum_k w_k r_k whose weights grow in log space while the EMA of Cov(r_k, w_clip) is below its
    target (Lu & Jiang 2026, §5): log w += lambda relu(c* - e) 1[mean r < o*]. Same interface as scalarize's methods;
    construct with keywords (num_objectives defaults to the length of init_weights or cov_targets)."""
    name, level = "ctwa", "reward"
    needs_gram = needs_losses_after = ratio_to_reference = False
    HELP = {"init_weights": "initial weights, K floats (default uniform 1/K, the paper's 1/3 each)",
            "cov_targets": "covariance targets c*, K floats (paper: 0.15 accuracy, 0.08 conciseness and clarity)",
            "lambda_lr": "step lambda on the log-weights", "ema_tau": "EMA rate tau of the covariance",
            "obj_targets": "freeze w_k once the batch mean of r_k reaches o*_k, K floats (none: never freeze)",
            "use_corr": "target the correlation instead of the covariance",
            "w_agg": "completion weight from token weights: mean | mean_unclipped | sum"}

    def __init__(self, init_weights=None, cov_targets=(0.15, 0.08, 0.08), lambda_lr=0.05, ema_tau=0.1,
                 obj_targets=(1.0, 0.95, 0.95), num_objectives=None, use_corr=False, w_agg="mean"):
        sizes = [len(torch.as_tensor(v).flatten()) for v in (init_weights, cov_targets) if v is not None]
        K = num_objectives or next((n for n in sizes if n > 1), None)
        if not K:
            raise ValueError("CTWA cannot tell the number of objectives: pass num_objectives or K init_weights")
        self.K, self.names, self.skipped = int(K), [str(k) for k in range(K)], 0
        w0 = _vector(1 / K if init_weights is None else init_weights, K, "init_weights", "--ctwa-init-weights")
        if not (w0 >= 0).all() or not w0.sum() > 0:
            raise ValueError(f"init_weights must be >= 0 with a positive sum, got {w0.tolist()}")
        self.log_w = w0.clamp(min=1e-8).log()
        self.cov_targets = _vector(cov_targets, K, "cov_targets", "--ctwa-cov-targets")
        self.obj_targets = _vector(math.inf if obj_targets is None else obj_targets, K, "obj_targets",
                                   "--ctwa-obj-targets")
        if w_agg not in ("mean", "mean_unclipped", "sum"):
            raise ValueError(f"--ctwa-w-agg must be one of mean, mean_unclipped, sum; got {w_agg!r}")
        self.lambda_lr, self.ema_tau, self.use_corr, self.w_agg = float(lambda_lr), float(ema_tau), use_corr, w_agg
        self.ema, self.deficit = None, torch.zeros(K, dtype=F64)

    @property
    def weights(self) -> torch.Tensor:
        return self.log_w.exp()

    def scalarize(self, rewards):
        if rewards.dim() != 2 or rewards.shape[1] != self.K or not torch.isfinite(rewards).all():
            raise ValueError(f"rewards must be finite (N, {self.K}), got shape {tuple(rewards.shape)} or NaN/inf")
        r = rewards if rewards.is_floating_point() else rewards.float()
        return r @ self.weights.to(r)  # (N,)

    def update(self, cov, objective_means, losses_after=None):
        """cov (K,): covariance_statistic(...)["signal"] of this step; objective_means (K,): batch means of r_k."""
        v = torch.as_tensor(cov, dtype=F64).to("cpu").flatten()  # the weights live on the CPU; cov may be on a GPU
        means = torch.as_tensor(objective_means, dtype=F64).to("cpu").flatten()
        if v.numel() != self.K or means.numel() != self.K:
            raise ValueError(f"cov and objective_means must have {self.K} entries, got {v.numel()}, {means.numel()}")
        if not (torch.isfinite(v).all() and torch.isfinite(means).all()):
            self.skipped += 1
            warnings.warn(f"ctwa: skipped a weight update (non-finite statistic); {self.skipped} skipped so far",
                          stacklevel=2)
            return
        self.ema = v.clone() if self.ema is None else (1 - self.ema_tau) * self.ema + self.ema_tau * v
        self.deficit = (self.cov_targets - self.ema).clamp(min=0) * (means < self.obj_targets)
        # no renormalisation: weights only grow, and group-normalised or whitened advantages see only their ratios
        self.log_w = self.log_w + self.lambda_lr * self.deficit

    def metrics(self) -> dict:
        out = {"skipped": float(self.skipped), "weight_sum": float(self.weights.sum())}
        for key, vec in (("weight", self.weights), ("ema", self.ema), ("deficit", self.deficit)):
            if vec is not None:
                out.update({f"{key}/{n}": float(x) for n, x in zip(self.names, vec)})
        return out

    def state_dict(self) -> dict:
        return {"log_w": self.log_w.tolist(), "ema": None if self.ema is None else self.ema.tolist(),
                "deficit": self.deficit.tolist(), "skipped": self.skipped}

    def load_state_dict(self, state: dict):
        if set(state) != {"log_w", "ema", "deficit", "skipped"}:
            raise ValueError(f"ctwa state has keys {sorted(state)}, expected deficit, ema, log_w, skipped")
        self.log_w, self.deficit = torch.tensor(state["log_w"], dtype=F64), torch.tensor(state["deficit"], dtype=F64)
        self.ema = None if state["ema"] is None else torch.tensor(state["ema"], dtype=F64)
        self.skipped = state["skipped"]


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
