"""Every baseline scalarizer of multi-objective RL fine-tuning, simplest first, one readable block each.

A method turns per-objective rewards (N, K) into one learning signal at one of three levels:
  reward level     scalarize(rewards (N, K)) -> score (N,), then the usual advantage estimator
                   linear, tchebycheff, smooth_tchebycheff, smooth_tchebycheff_omd, dynamic (and ctwa.CTWA)
  advantage level  combine(advantages (N, K), rewards (N, K), weight (N,) or None) -> advantages (N,): lagrangian,
                   pama (weight: a completion's tokens inside the reference's trust region, for ratio_to_reference)
  gradient level   coefficients(gram (K, K), losses (K,)) -> c (K,), update direction d = sum_k c_k g_k:
                   mgda, gradnorm, nash_mtl, famo, pcgrad, cagrad, raco
Gradient-level methods see only the Gram matrix gram_ij = g_i . g_j of the per-objective LOSS gradients, so one
all-reduce of partial Grams makes them exact under DDP/FSDP (the official code solves per shard). Their solvers are
exact pure functions of it, each beside its method: faces-of-the-simplex enumeration (MGDA, CAGrad/RACO dual),
damped Newton (Nash-MTL).

Every method declares what the training loop must give it (the attributes of `Method`), takes update(statistic,
objective_means) after each policy update, logs metrics() keyed "<kind>/<objective name>" (assign method.names),
saves JSON-ready state_dict()/load_state_dict(), and has keyword hyperparameters with the papers' defaults
(hyperparameters(cls) gives train.py one --<method>-<name> flag each). Logged kinds: weight/ = a method's weight on an
objective's reward or advantage, coef/ = the gradient-level coefficients c, multiplier/ = Lagrange multipliers.
NaN/inf rewards or advantages raise ValueError (a reward bug); a NaN/inf Gram (methods: zero coefficients) or
post-step statistic skips the state update with a counted warning; the pure solvers raise. The paper's intent is the
default where the official code departs from it.

References: Lu & Jiang 2026, arXiv 2602.06869 (CTWA; its code yining610/ctwa adapted most baselines to RL).
Run:  python scalarize.py  (gradient-level methods side by side);  python -m pytest -q tests/test_scalarize.py
"""
import inspect
import itertools
import math
import warnings

import torch

F64 = torch.float64


def vector(values, K, what, flag, nonneg=False, finite=True):
    """A scalar, length-1 or length-K sequence -> (K,) float64; errors name the flag that fixes them."""
    if values is None:
        raise ValueError(f"{what} are required ({flag})")
    v = torch.as_tensor(values, dtype=F64).to("cpu").flatten()  # method state lives on the CPU
    v = v.expand(K).clone() if v.numel() == 1 else v
    if v.numel() != K:
        raise ValueError(f"{what} has {v.numel()} entries, expected {K}; pass {K} values ({flag})")
    if (v.isnan() if not finite else ~v.isfinite()).any() or (nonneg and (v < 0).any()):
        raise ValueError(f"{what} must be {'finite' if finite else 'a number'}{' and >= 0' if nonneg else ''}, "
                         f"got {v.tolist()} ({flag})")
    return v


def matrix(x, K, what):
    """(N, K) rewards or advantages, checked; NaN/inf raise because no score can be built from them."""
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != K:
        raise ValueError(f"{what} must be (N, {K}) (one column per objective), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or inf; fix the reward function or skip this step")
    return x if x.is_floating_point() else x.float()


def _gram(gram, K=None, finite=True):
    """(K, K) float64 CPU Gram, checked; non-finite entries (a gradient overflowed) raise unless finite=False."""
    g = torch.as_tensor(gram).detach().to("cpu", F64)
    if g.dim() != 2 or g.shape[0] != g.shape[1] or (K is not None and g.shape[0] != K):
        raise ValueError(f"gram must be ({K or 'K'}, {K or 'K'}), got shape {tuple(g.shape)}")
    if finite and not torch.isfinite(g).all():
        raise ValueError("gram contains NaN or inf (a per-objective gradient overflowed); skip this optimizer step")
    return (g + g.T) / 2  # all-reduced partial Grams can be asymmetric by rounding


def usable_vector(x, K):
    """(K,) float64 CPU vector of per-objective values, or None when it is unusable (wrong size, NaN/inf)."""
    v = torch.as_tensor(x, dtype=F64).to("cpu").flatten()
    return v if v.numel() == K and torch.isfinite(v).all() else None


def choice(value, options, flag):
    """value, checked to be one of options; the error names the flag that sets it."""
    if value not in options:
        raise ValueError(f"{flag} must be one of {options}, got {value!r}")
    return value


PREFERENCE_HELP = {"weights": "preference weights, K floats (default uniform)",
                   "ideal_point": "fixed ideal point z, K floats (default: running max of the batch maxima)"}


class Method:
    """What every method shares, and what it declares so that train.py asks instead of testing names."""
    name = ""
    level = "reward"  # reward: scalarize(); advantage: combine(); gradient: coefficients()
    clipped = True  # trained with PPO's clip; False = plain REINFORCE with the ratio (the paper's linear/dynamic/ctwa)
    kl_loss = True  # the paper's math500 run had the KL penalty (MGDA, GradNorm, Lagrangian, ... ran without it)
    needs_gram = False  # observe_gram(gram, lr) with the Gram of per-objective gradients before scalarize (dynamic)
    target_layers = None  # layer indices whose parameters form that Gram (None: every parameter)
    needs_losses_after = False  # after_step(losses) with the same mini-batch's losses after each optimizer step (famo)
    needs_statistic = None  # "cov" | "corr": the post-update statistic update() needs every step (ctwa)
    w_agg = "mean"  # how that statistic's completion weight averages its tokens
    ratio_to_reference = False  # the loss ratio is pi / pi_ref and there is no KL term (pama's Noon loss)
    PAPER_RUN: dict = {}  # --task math500: where the paper's run of this method left the shared settings (flags or
    #                       its own hyperparameters; App. F, else its official script)
    HELP: dict = {}
    LOGGED: dict = {"coef": "coef"}  # metric kind -> attribute holding a (K,) vector or a scalar
    _state: tuple = ()  # attributes saved by state_dict besides "skipped"

    def __init__(self, num_objectives):
        if int(num_objectives) < 1:
            raise ValueError(f"num_objectives must be >= 1, got {num_objectives}")
        self.K = int(num_objectives)
        self.names = [str(k) for k in range(self.K)]
        self.skipped, self.coef = 0, None  # coef: the gradient-level methods' last coefficients

    def update(self, statistic, objective_means):
        """After every policy update (statistic: the needs_statistic vector, else None); default: no state."""

    def coefficients(self, gram, losses=None):
        """Gradient level: c (K,) for d = sum_k c_k g_k; stateless methods only define _solve(gram)."""
        gram = self._usable(gram)
        self.coef = torch.zeros(self.K, dtype=F64) if gram is None else self._solve(gram)
        return self.coef

    def _usable(self, gram):
        """The checked Gram, or None after a counted warning if it holds NaN/inf: the method state stays as it is and
        the coefficients are 0 (the gradients are non-finite too, so the caller skips the optimizer step)."""
        gram = _gram(gram, self.K, finite=False)
        if torch.isfinite(gram).all():
            return gram
        self._skip("non-finite Gram matrix, coefficients 0; skip this optimizer step")
        return None

    def _skip(self, why):
        self.skipped += 1
        warnings.warn(f"{self.name}: skipped a state update ({why}); {self.skipped} skipped so far", stacklevel=3)

    def _flag(self, hp):
        return f"--{self.name}-{hp}".replace("_", "-")

    def _preferences(self, weights, ideal_point):
        """Preference weights (K,) and the ideal point z (fixed, or None until the first batch's maxima)."""
        self.preference = vector(1 / self.K if weights is None else weights, self.K, "weights", self._flag("weights"),
                                 nonneg=True)
        self.fixed = ideal_point is not None
        self.z = vector(ideal_point, self.K, "ideal_point", self._flag("ideal_point")) if self.fixed else None

    def _ideal(self, r):
        """z (K,): fixed, or the running max of the batch maxima (CTWA's ref_mode=running_max), updated here."""
        batch = r.max(0).values.detach().to("cpu", F64)
        self.z = self.z if self.fixed else batch if self.z is None else torch.maximum(self.z, batch)
        return self.z

    def metrics(self) -> dict:
        if len(self.names) != self.K:
            raise ValueError(f"names has {len(self.names)} entries but there are {self.K} objectives")
        out = {"skipped": float(self.skipped)}
        for kind, attr in self.LOGGED.items():
            v = getattr(self, attr)
            if torch.is_tensor(v):
                out.update({f"{kind}/{n}": float(x) for n, x in zip(self.names, v)})
            elif v is not None:
                out[kind] = float(v)
        return out

    def state_dict(self) -> dict:
        state = {k: getattr(self, k) for k in ("skipped",) + self._state}
        return {k: v.tolist() if torch.is_tensor(v) else v for k, v in state.items()}

    def load_state_dict(self, state: dict):
        if set(state) != {"skipped", *self._state}:
            raise ValueError(f"{self.name} state keys {sorted(state)} != {sorted(('skipped',) + self._state)}")
        for k, v in state.items():
            setattr(self, k, torch.tensor(v, dtype=F64) if isinstance(v, list) else v)


# ------------------------------------------------------------------------------------------ reward level

class Linear(Method):
    """s = sum_k w_k r_k with fixed weights (weighted sum; the CTWA paper's linear baseline)."""
    name, clipped = "linear", False
    HELP = {"weights": "fixed weights, K floats (default uniform 1/K)"}
    LOGGED = {"weight": "preference"}

    def __init__(self, num_objectives, weights=None):
        super().__init__(num_objectives)
        self._preferences(weights, None)

    def scalarize(self, rewards):
        r = matrix(rewards, self.K, "rewards")
        return r @ self.preference.to(r)  # (N,)


class Tchebycheff(Method):
    """s = -max_k w_k (z_k - r_k) per completion, z the ideal point (Bowman 1976; weighted Tchebycheff).
    mode "objective": the theory's TCH of expected rewards, i.e. s = r_k* with k* = argmax_k w_k (z_k - mean r_k).
    State: z, the running max of batch maxima unless ideal_point is fixed (updated by scalarize)."""
    name = "tchebycheff"
    HELP = {**PREFERENCE_HELP, "mode": "sample (per completion, CTWA's baseline) | objective"}
    LOGGED = {"weight": "preference", "ideal": "z"}
    _state = ("z",)

    def __init__(self, num_objectives, weights=None, ideal_point=None, mode="sample"):
        super().__init__(num_objectives)
        self._preferences(weights, ideal_point)
        self.mode = choice(mode, ("sample", "objective"), self._flag("mode"))
        self.active = None

    def scalarize(self, rewards):
        r = matrix(rewards, self.K, "rewards")
        w, z = self.preference.to(r), self._ideal(r).to(r)
        if self.mode == "objective":
            self.active = int(torch.argmax(w * (z - r.mean(0))))
            return r[:, self.active].clone()
        # sequence level: CTWA's code applies this map at every token, which adds a per-token length penalty
        gaps = w * (z - r)  # (N, K)
        self.active = gaps.argmax(1)  # (N,)
        return -gaps.amax(1)


class SmoothTchebycheffMu(Method):
    """STCH_mu = mu log sum_k exp(w_k (z_k - R_k)/mu) of the batch means R (Lin et al. 2024, arXiv 2402.19078); its
    gradient is a weighted sum with omega = w * softmax(w (z - R)/mu) (detached), so s = sum_k omega_k r_k.
    mode "sample": s = -mu logsumexp_k(w_k (z_k - r_k)/mu) per completion. State: ideal point z as Tchebycheff."""
    name = "smooth_tchebycheff_mu"
    HELP = {**PREFERENCE_HELP, "mu": "smoothing temperature mu > 0 (Lin et al.: 0.01 for objectives in [0, 1])",
            "mode": "objective (STCH of the mean rewards) | sample (per completion)"}
    LOGGED = {"weight": "omega", "ideal": "z", "stch": "value"}
    _state = ("z",)

    def __init__(self, num_objectives, weights=None, mu=0.01, ideal_point=None, mode="objective"):
        super().__init__(num_objectives)
        if not mu > 0:
            raise ValueError(f"{self._flag('mu')} must be > 0, got {mu}")
        self._preferences(weights, ideal_point)
        self.mu, self.mode = float(mu), choice(mode, ("objective", "sample"), self._flag("mode"))
        self.omega, self.value = None, None

    def scalarize(self, rewards):
        r = matrix(rewards, self.K, "rewards")
        z = self._ideal(r)
        if self.mode == "sample":
            return -self.mu * torch.logsumexp(self.preference.to(r) * (z.to(r) - r) / self.mu, dim=1)
        gaps = self.preference * (z - r.mean(0).to("cpu", F64)) / self.mu  # (K,)
        self.value = self.mu * float(torch.logsumexp(gaps, 0))
        self.omega = self.preference * torch.softmax(gaps, 0)
        return r @ self.omega.to(r)


class SmoothTchebycheff(Method):
    """The CTWA paper's smooth Tchebycheff baseline (App. F; Li et al. 2026, cf. OMD-TCH, arXiv 2410.21764): online
    mirror descent on the weights, s = sum_k w_k r_k with w = softmax(u / tau), then u += eta p (z - R) (Hedge on the
    preference-weighted deficits of the batch means R). State: u and the ideal point z, both updated by scalarize."""
    name = "smooth_tchebycheff"
    HELP = {**PREFERENCE_HELP, "omd_lr": "OMD learning rate eta on the log-weights (the paper's script: 0.3)",
            "temperature": "softmax temperature tau (only eta / tau matters)",
            "init": "preference (u0 = log p, the paper's script) | uniform (u0 = log 1/K)"}
    LOGGED = {"weight": "w", "ideal": "z"}
    _state = ("u", "z")

    def __init__(self, num_objectives, weights=None, omd_lr=0.3, temperature=1.0, init="preference", ideal_point=None):
        super().__init__(num_objectives)
        if not temperature > 0:
            raise ValueError(f"{self._flag('temperature')} must be > 0, got {temperature}")
        self._preferences(weights, ideal_point)
        self.omd_lr, self.temperature = float(omd_lr), float(temperature)
        init = choice(init, ("preference", "uniform"), self._flag("init"))
        u0 = self.preference if init == "preference" else torch.full((self.K,), 1 / self.K, dtype=F64)
        self.u = u0.clamp(1e-8).log()
        self.w = torch.softmax(self.u / self.temperature, 0)

    def scalarize(self, rewards):
        r = matrix(rewards, self.K, "rewards")
        z = self._ideal(r)
        self.w = torch.softmax(self.u / self.temperature, 0)  # this batch uses the weights before its own deficits
        # the CTWA port drops p from the primal step (OMD-TCH scalarises with p * w); equal for uniform p
        self.u = self.u + self.omd_lr * self.preference * (z - r.mean(0).to("cpu", F64))
        return r @ self.w.to(r)


# ------------------------------------------------------------------------------------------ advantage level

class Lagrangian(Method):
    """max R_0 s.t. R_k >= b_k: projected dual ascent lam_k <- clip(lam_k + eta (b_k - R_k), 0, lam_max) on the batch
    means, then the advantage A_0 + sum_k lam_k A_k with the fresh lam (Mahdavi et al. 2013 primal-dual, NeurIPS; at
    advantage level as CTWA's code does, although its paper describes reward level). State: the multipliers lam (K,),
    0 at the primary objective."""
    name, level = "lagrangian", "advantage"
    PAPER_RUN = {"kl_coef": 0.0, "constraints": [0.9, 0.9]}  # App. F: no KL loss; its script's targets
    HELP = {"primary": "index of the objective to maximise (0 = accuracy)",
            "constraints": "targets b for the other K-1 objectives in order (default 0.9 each, the CTWA script)",
            "dual_lr": "dual ascent step eta on the multipliers",
            "max_multiplier": "upper bound of every multiplier (bounded dual domain)",
            "normalize": "divide the combined advantage by 1 + sum lam (Safe-RLHF style)"}
    LOGGED = {"multiplier": "multipliers"}
    _state = ("multipliers",)

    def __init__(self, num_objectives, primary=0, constraints=None, dual_lr=0.01, max_multiplier=10.0,
                 normalize=False):
        super().__init__(num_objectives)
        if not 0 <= primary < self.K:
            raise ValueError(f"{self._flag('primary')} must be an objective index in [0, {self.K}), got {primary}")
        self.primary, self.constrained = primary, torch.arange(self.K) != primary  # (K,) bool
        self.targets = torch.zeros(self.K, dtype=F64)
        b = 0.9 if constraints is None else constraints
        self.targets[self.constrained] = vector(b, self.K - 1, "constraints", self._flag("constraints"))
        self.dual_lr, self.max_multiplier, self.normalize = float(dual_lr), float(max_multiplier), bool(normalize)
        self.multipliers = torch.zeros(self.K, dtype=F64)  # multipliers[primary] stays 0

    def combine(self, advantages, rewards, weight=None):
        """weight: per-completion weights, which the Lagrangian does not use (every completion counts once)."""
        A = matrix(advantages, self.K, "advantages")
        means = matrix(rewards, self.K, "rewards").mean(0).to("cpu", F64)
        lam = (self.multipliers + self.dual_lr * (self.targets - means)).clamp(0, self.max_multiplier)
        self.multipliers = lam * self.constrained
        out = A[:, self.primary] + A @ self.multipliers.to(A)  # (N,)
        return out / (1 + float(self.multipliers.sum())) if self.normalize else out


def pama_value(a: torch.Tensor):
    """PAMA Theorem 1: min over c in the simplex of |sum_k c_k a_k| for scalars a (K,) -> (s*, c*): s* is the
    projection of 0 onto [min a, max a]; c* sits on the argmin (all >= 0), the argmax (all <= 0), or mixes both."""
    lo, hi = int(a.argmin()), int(a.argmax())
    c = torch.zeros_like(a)
    if a[lo] >= 0:
        c[lo] = 1
    elif a[hi] <= 0:
        c[hi] = 1
    else:
        c[lo], c[hi] = a[hi] / (a[hi] - a[lo]), -a[lo] / (a[hi] - a[lo])
    return float(c @ a), c


class PAMA(Method):
    """Noon-PPO advantages [A_k]_+, a_k = mean_n weight_n [A_nk]_+, c* from Theorem 1 on a (He & Maghsudi 2025, arXiv
    2508.07768). variant "paper": combined advantage sum_k c*_k [A_nk]_+ per completion, weight 1. variant "official"
    (the CTWA code's update_policy_pama): every completion gets the scalar s*, and a_k is the token-mean over the batch
    of [A_k]_+ 1[pi_old / pi_ref <= 1 + eps] (pass weight_n = such tokens of completion n / mean length). Both use the
    Noon loss: ratio to the reference policy, no KL term."""
    name, level, ratio_to_reference = "pama", "advantage", True
    PAPER_RUN = {"kl_coef": 0.0}  # the official update_policy_pama adds no KL term (use_kl_loss only loads pi_ref)
    HELP = {"variant": "paper (per completion sum_k c*_k [A_k]_+) | official (the CTWA code: the scalar s* for every "
                       "token, a_k over the tokens inside the reference's trust region)"}
    LOGGED = {"weight": "c", "a": "a", "s_star": "s"}

    def __init__(self, num_objectives, variant="paper"):
        super().__init__(num_objectives)
        self.variant = choice(variant, ("paper", "official"), self._flag("variant"))
        self.a, self.c, self.s = None, None, None

    def combine(self, advantages, rewards, weight=None):
        """weight (N,): per-completion weight in a_k, used by the official variant (train.py passes its tokens with
        pi_old/pi_ref <= 1 + eps_high, over the mean length)."""
        A = matrix(advantages, self.K, "advantages").clamp(min=0)  # Noon: no negative advantages
        w = torch.ones_like(A[:, 0]) if weight is None or self.variant == "paper" else torch.as_tensor(weight).to(A)
        self.a = (w[:, None] * A).mean(0).to("cpu", F64)  # (K,)
        self.s, self.c = pama_value(self.a)
        if self.variant == "official":
            return torch.full_like(A[:, 0], self.s)
        return A @ self.c.to(A)


def reference_trust_tokens(old_logp, ref_logp, mask, eps):
    """Tokens (n,) of each completion with pi_old / pi_ref <= 1 + eps (the official PAMA's a_k counts only these)."""
    u = (old_logp.float() - ref_logp.float()).clamp(-20, 20).exp()
    return ((u <= 1 + eps) & mask.bool()).sum(1)


# ------------------------------------------------------------------------------------------ dynamic weighting

class Dynamic(Method):
    """Gradient-based dynamic reward weighting (Lu et al. 2025, arXiv 2509.11452): influence I_k = sum_j g_k . g_j
    (Gram row sums), w <- softmax(log w + mean(eta_t I_t) / mu) over each block of accumulation_steps steps (eta_t the
    policy learning rate), then s = sum_k w_k r_k with the new w. State: w and the accumulator."""
    name, clipped, needs_gram = "dynamic", False, True
    PAPER_RUN = {"lr_schedule": "polynomial", "target_layers": range(10, 26)}  # its official script
    HELP = {"weights": "initial weights, K floats (default uniform)",
            "mu": "regularization mu: the exponent is lr * influence / mu",
            "accumulation_steps": "steps of influence averaged per weight update",
            "target_layers": "decoder layers whose parameters form the per-objective gradients (default: all)"}
    LOGGED = {"weight": "weights"}
    _state = ("weights", "acc", "count")

    def __init__(self, num_objectives, weights=None, mu=1e-5, accumulation_steps=1, target_layers: list[int] = None):
        super().__init__(num_objectives)
        self.target_layers = None if target_layers is None else [int(i) for i in target_layers]
        w = vector(1 / self.K if weights is None else weights, self.K, "weights", self._flag("weights"), nonneg=True)
        if not w.sum() > 0 or not mu > 0 or accumulation_steps < 1:
            raise ValueError("dynamic needs weights with a positive sum, mu > 0 and accumulation_steps >= 1")
        self.weights, self.mu, self.steps = w / w.sum(), float(mu), int(accumulation_steps)
        self.acc, self.count = torch.zeros(self.K, dtype=F64), 0

    def observe_gram(self, gram, lr: float):
        gram = self._usable(gram)
        if gram is None:
            return
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be a finite non-negative learning rate, got {lr}")
        # the learning rate enters once, as in the paper; CTWA's port applies it twice, freezing the weights
        self.acc, self.count = self.acc + lr * gram.sum(1), self.count + 1
        if self.count == self.steps:
            self.weights = torch.softmax(self.weights.log() + self.acc / self.count / self.mu, 0)
            self.acc, self.count = torch.zeros(self.K, dtype=F64), 0

    def scalarize(self, rewards):
        r = matrix(rewards, self.K, "rewards")
        return r @ self.weights.to(r)


# ------------------------------------------------------------------------------------------ gradient level
# Shared by the exact solvers: the Gram is normalised first (every solver is scale-free), then the optimum over the
# simplex is found among the KKT points of its faces.

def _normalized(gram):
    """Gram scaled to unit mean diagonal and the scale (0: all gradients zero)."""
    scale = float(gram.diagonal().mean())
    return (gram / scale if scale > 0 else gram), scale


def _faces(H, b):
    """For every support S of the simplex, (w0, w1) zero outside S: w0 the min-norm point of aff(S) under H
    (H_S w0 = mu 1, sum w0 = 1), w1 the tangent solution of H_S w1 = nu 1 - b_S, sum w1 = 0. Faces whose KKT system
    is inconsistent (duplicate gradients) are skipped: a smaller face then holds an optimum."""
    K = H.shape[0]
    for n in range(1, K + 1):
        for S in itertools.combinations(range(K), n):
            idx = list(S)
            M = torch.zeros(n + 1, n + 1, dtype=F64)
            M[:n, :n], M[:n, n], M[n, :n] = H[idx][:, idx], 1, 1
            rhs = torch.zeros(n + 1, 2, dtype=F64)
            rhs[n, 0], rhs[:n, 1] = 1, -b[idx]
            x = torch.linalg.lstsq(M, rhs, driver="gelsd").solution  # (n + 1, 2); gelsy is not bitwise deterministic
            if (M @ x - rhs).abs().max() > 1e-9 * (1 + float(rhs.abs().max())):
                continue
            w = torch.zeros(K, 2, dtype=F64)
            w[idx] = x[:n]
            yield w[:, 0], w[:, 1]


def _argmin_simplex(candidates, f):
    """The feasible candidate (>= -1e-9, renormalised) with the smallest f; ties keep the earliest (smallest face)."""
    best, best_val = None, math.inf
    for w in candidates:
        if w.min() < -1e-9:
            continue
        w = w.clamp(min=0) / w.clamp(min=0).sum()
        val = f(w)
        if val < best_val - 1e-12:
            best, best_val = w, val
    return best


def mgda_coeffs(gram: torch.Tensor) -> torch.Tensor:
    """Min-norm point of the convex hull: alpha = argmin_{alpha in simplex} alpha^T gram alpha, d = sum alpha_k g_k
    (Desideri 2012; Sener & Koltun 2018, arXiv 1810.04650), exact by enumerating the faces of the simplex."""
    gram = _gram(gram)
    H, scale = _normalized(gram)
    if scale <= 0:
        return torch.full((H.shape[0],), 1 / H.shape[0], dtype=F64)  # all gradients zero: any alpha gives d = 0
    return _argmin_simplex((w0 for w0, _ in _faces(H, torch.zeros(H.shape[0], dtype=F64))), lambda w: float(w @ H @ w))


class MGDA(Method):
    """Multiple-gradient descent: the min-norm convex combination of the gradients (mgda_coeffs). Stateless."""
    name, level = "mgda", "gradient"
    PAPER_RUN = {"kl_coef": 0.0}  # App. F: without the KL loss

    def _solve(self, gram):
        return mgda_coeffs(gram)


class GradNorm(Method):
    """Balance the weighted gradient norms w_k|g_k| toward mean_j(w_j|g_j|) r_k^alpha, r_k the relative inverse
    training rate (Chen et al. 2018, arXiv 1711.02257): w <- w - lr sign(w_k|g_k| - target_k)|g_k|, then sum w = K,
    updated before use; the coefficients are the weights. State: w, the starting and latest progress measures."""
    name, level = "gradnorm", "gradient"
    PAPER_RUN = {"kl_coef": 0.0}  # its official script: use_kl_loss=False
    HELP = {"alpha": "restoring-force exponent alpha", "lr": "SGD step on the weights",
            "progress": "reward (training rate from reward deficits 1 - mean r_k, one step behind) | loss (the "
                        "paper's L_k/L_k(0), skipped while a ratio is not > 0)"}
    _state = ("weights", "start", "current")

    def __init__(self, num_objectives, alpha=1.5, lr=0.025, progress="reward"):
        super().__init__(num_objectives)
        self.alpha, self.lr = float(alpha), float(lr)
        # RL surrogate losses are ~0 and sign-indefinite (whitened advantages): L/L(0) carries no signal and a
        # negative ratio^alpha is NaN (CTWA's code then has NaN weights forever); reward deficits are always > 0
        self.progress = choice(progress, ("reward", "loss"), self._flag("progress"))
        self.weights = torch.ones(self.K, dtype=F64)
        self.start, self.current = None, None

    def coefficients(self, gram, losses=None):
        gram = self._usable(gram)
        if gram is None:
            self.coef = torch.zeros(self.K, dtype=F64)
            return self.coef
        if self.progress == "loss":
            self.current = vector(losses, self.K, "losses", "per-objective surrogate losses")
            self.start = self.current.clone() if self.start is None else self.start
        self.coef = self._step(gram) if self.start is not None else self.weights.clone()  # none measured yet: equal
        return self.coef

    def _step(self, gram):
        ratio = self.current / self.start
        if not (torch.isfinite(ratio).all() and (ratio > 0).all()):
            self._skip(f"training-rate ratios {ratio.tolist()} are not all positive")
            return self.weights.clone()
        norms = gram.diagonal().clamp(min=0).sqrt()
        G = self.weights * norms
        target = G.mean() * (ratio / ratio.mean()) ** self.alpha  # treated as a constant, as in the paper
        w = (self.weights - self.lr * torch.sign(G - target) * norms).clamp(min=0)
        if w.sum() > 0:
            self.weights = w * self.K / w.sum()
        else:
            self._skip("every weight stepped below zero (lower --gradnorm-lr)")
        return self.weights.clone()

    def update(self, statistic, objective_means):
        if self.progress == "loss":
            return
        means = usable_vector(objective_means, self.K)
        if means is None:
            return self._skip(f"objective means {objective_means} are not {self.K} finite values")
        self.current = (1 - means).clamp(min=1e-6)  # rewards lie in [0, 1]: 1 - mean is the remaining deficit
        self.start = self.current.clone() if self.start is None else self.start


def _newton(A, a, iters):
    """Damped Newton on 1/2 a^T A a - sum log a (self-concordant: the step 1/(1 + decrement) keeps a > 0 and
    converges from any start); returns (a, converged)."""
    for _ in range(iters):
        grad = A @ a - 1 / a
        step = torch.linalg.solve(A + torch.diag(a ** -2), grad)
        dec = math.sqrt(max(float(grad @ step), 0.0))  # Newton decrement
        a = a - step / (1 + dec) if dec > 0.25 else a - step
        if dec < 1e-10:
            return a, True
    return a, False


def nash_mtl_coeffs(gram: torch.Tensor, max_norm: float = 0.0, eps: float = 1e-8) -> torch.Tensor:
    """Nash bargaining solution gram alpha = 1/alpha, alpha > 0 (Navon et al. 2022, arXiv 2202.01017): the minimiser
    of 1/2 alpha^T gram alpha - sum log alpha_k by damped Newton. Then g_k . d = 1/alpha_k and |d| = sqrt(K);
    max_norm > 0 rescales alpha so |d| <= max_norm (the reference clips the shared gradient at 1); 0 does not clip."""
    gram = _gram(gram)
    K = gram.shape[0]
    H, scale = _normalized(gram)
    if scale <= 0:
        return torch.ones(K, dtype=F64)
    # an eps ridge always has a solution (none exists for a zero gradient or g_2 = -g_1; alpha stays <= ~1/sqrt(eps)),
    # then a few undamped-problem steps polish it to the exact solution whenever one exists
    a, _ = _newton(H + eps * torch.eye(K, dtype=F64), (H.diagonal() + eps).rsqrt(), 1000)
    exact, converged = _newton(H, a, 20)
    alpha = (exact if converged else a) / math.sqrt(scale)  # scaling every gradient by c scales alpha by 1/c
    norm = math.sqrt(max(float(alpha @ gram @ alpha), 0.0))
    return alpha * (max_norm / norm) if 0 < max_norm < norm else alpha


class NashMTL(Method):
    """Nash bargaining over the objectives' improvements (nash_mtl_coeffs). Stateless (the solve is exact)."""
    name, level = "nash_mtl", "gradient"
    PAPER_RUN = {"kl_coef": 0.0}  # its official script: use_kl_loss=False
    HELP = {"max_norm": "rescale alpha so |d| <= max_norm (reference 1.0; 0 = no rescale)"}

    def __init__(self, num_objectives, max_norm=1.0):
        super().__init__(num_objectives)
        self.max_norm = float(max_norm)

    def _solve(self, gram):
        return nash_mtl_coeffs(gram, self.max_norm)


class FAMO(Method):
    """Fast adaptive multitask optimisation (Liu et al. 2023, arXiv 2306.03792): coefficients z_k / (c D_k), z =
    softmax(xi), D_k = L_k - L*_k, c = sum z_k / D_k (the gradient of sum z_k log D_k / c); after each optimizer step
    xi takes an Adam step on z (delta - z.delta), delta_k = log D_k - log D'_k, the log-loss drop on the same
    mini-batch (as the official code: one logit update per mini-batch)."""
    name, level, needs_losses_after = "famo", "gradient", True
    PAPER_RUN = {"kl_coef": 0.0, "weight_decay": 1e-5}  # its official script (FAMO's paper: decay 1e-3)
    HELP = {"lr": "Adam learning rate on the weight logits xi", "weight_decay": "Adam L2 weight decay on xi",
            "margin": "lower bound L* = loss - margin whenever a loss reaches its bound (signed RL losses)",
            "lower_bounds": "initial lower bounds L*, K floats (default: first losses - margin; paper 0)"}
    LOGGED = {"coef": "coef", "weight": "weights"}
    _state = ("xi", "m", "v", "t", "bounds", "before")

    def __init__(self, num_objectives, lr=0.025, weight_decay=1e-3, margin=1.0, lower_bounds=None):
        super().__init__(num_objectives)
        if not margin > 0:
            raise ValueError(f"{self._flag('margin')} must be > 0, got {margin}")
        self.lr, self.weight_decay, self.margin, self.eps = float(lr), float(weight_decay), float(margin), 1e-8
        self.bounds = None if lower_bounds is None else \
            vector(lower_bounds, self.K, "lower_bounds", self._flag("lower_bounds"))
        self.xi, self.m, self.v = (torch.zeros(self.K, dtype=F64) for _ in range(3))
        self.t, self.before = 0, None

    def _rebound(self, L):
        """Signed RL surrogate losses can reach L*: move those bounds to L - margin (CTWA port) so logs stay finite."""
        self.bounds = L - self.margin if self.bounds is None else \
            torch.where(L - self.bounds > 0, self.bounds, L - self.margin)

    def coefficients(self, gram, losses=None):
        if self._usable(gram) is None:
            self.before, self.coef = None, torch.zeros(self.K, dtype=F64)  # so the coming after_step() skips too
            return self.coef
        L = vector(losses, self.K, "losses", "per-objective surrogate losses")
        self._rebound(L)
        D = L - self.bounds + self.eps
        z = torch.softmax(self.xi, 0)
        self.before, self.coef = L, z / ((z / D).sum() * D)
        return self.coef

    def after_step(self, losses_after):
        """The logit update, with the per-objective losses of the mini-batch of the last coefficients() call
        re-evaluated after the optimizer step."""
        after = usable_vector(losses_after, self.K)
        if self.before is None or after is None:
            return self._skip(f"losses_after {losses_after} unusable (or no coefficients() call before)")
        self._rebound(torch.minimum(self.before, after))
        delta = (self.before - self.bounds + self.eps).log() - (after - self.bounds + self.eps).log()
        z = torch.softmax(self.xi, 0)
        grad = z * (delta - z @ delta) + self.weight_decay * self.xi  # softmax Jacobian^T delta; torch Adam's L2 decay
        self.t += 1
        self.m, self.v = 0.9 * self.m + 0.1 * grad, 0.999 * self.v + 0.001 * grad * grad
        m_hat, v_hat = self.m / (1 - 0.9 ** self.t), self.v / (1 - 0.999 ** self.t)
        self.xi = self.xi - self.lr * m_hat / (v_hat.sqrt() + 1e-8)

    @property
    def weights(self):
        return torch.softmax(self.xi, 0)


def pcgrad_coeffs(gram: torch.Tensor, order) -> torch.Tensor:
    """Projecting conflicting gradients (Yu et al. 2020, arXiv 2001.06782): each g_i visits the other g_j in `order`
    and drops its component along g_j when g_i^PC . g_j < 0 (running g_i^PC, original g_j); d = sum_i g_i^PC.
    In coefficients g_i^PC = sum_j C_ij g_j, so g_i^PC . g_j = (C gram)_ij."""
    gram = _gram(gram)
    K = gram.shape[0]
    order = [int(j) for j in order]
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of range({K}), got {order}")
    C = torch.eye(K, dtype=F64)
    for i in range(K):
        for j in order:
            if j == i or gram[j, j] <= 0:  # a zero gradient has no direction to project away
                continue
            dot = C[i] @ gram[:, j]
            if dot < 0:
                C[i, j] -= dot / gram[j, j]
    return C.sum(0)


class PCGrad(Method):
    """Gradient surgery with a fresh random visiting order every step (pcgrad_coeffs). State: the step counter,
    which with the seed fixes the order, so a resumed run draws the same orders."""
    name, level = "pcgrad", "gradient"
    HELP = {"seed": "seed of the per-step random visiting order"}
    _state = ("step",)

    def __init__(self, num_objectives, seed=0):
        super().__init__(num_objectives)
        self.seed, self.step = int(seed), 0

    def _solve(self, gram):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        self.step += 1
        return pcgrad_coeffs(gram, torch.randperm(self.K, generator=gen).tolist())


def _cagrad_dual(H, p, c):
    """w* = argmin_{w in simplex} w.b + s |G_w|, b = H p, s = c |g_0|, g_0 = sum p_k g_k (CAGrad's dual), exact: on
    each face the stationary point is w0 + w1 sqrt(q0 / (s^2 - q1)), q0 = w0.H.w0, q1 = w1.H.w1 (from b + k H w = nu 1,
    k = s / |G_w|), and w0 itself covers the kink |G_w| = 0. Returns (w*, s)."""
    b, s = H @ p, c * math.sqrt(max(float(p @ H @ p), 0.0))

    def candidates():
        for w0, w1 in _faces(H, b):
            yield w0
            q0, q1 = float(w0 @ H @ w0), float(w1 @ H @ w1)
            if q0 > 1e-12 and s * s > q1:
                yield w0 + w1 * math.sqrt(q0 / (s * s - q1))

    return _argmin_simplex(candidates(), lambda w: float(w @ b) + s * math.sqrt(max(float(w @ H @ w), 0.0))), s


def _conflict_averse(gram, p, c, clip):
    """Coefficients p + s w/|G_w| of d = g_0 + c|g_0| G_w/|G_w|, w the dual optimum (clipped to w <= p for RACO)."""
    if not c >= 0:
        raise ValueError(f"the conflict-aversion radius c must be >= 0 (papers: c in [0, 1)), got {c}")
    H, scale = _normalized(gram)
    if scale <= 0:
        return p
    w, s = _cagrad_dual(H, p, c)
    # RACO's clip bounds each objective's share of the correction by its preference; not renormalised
    w = torch.minimum(w, p) if clip else w
    gw = math.sqrt(max(float(w @ H @ w), 0.0))
    return p + s * w / gw if gw > 1e-12 else p  # s and |G_w| both scale with sqrt(scale): the ratio is scale-free


def cagrad_coeffs(gram: torch.Tensor, c: float = 0.4, weights=None) -> torch.Tensor:
    """Conflict-averse gradient (Liu et al. 2021, arXiv 2110.14048): d = g_0 + c|g_0| g_w/|g_w|, g_0 the mean gradient
    (or the weighted anchor sum_k w_k g_k, w summing to 1: RACO's unclipped comparison), w* the dual optimum of
    max_d min_k g_k . d s.t. |d - g_0| <= c|g_0|. Unrescaled (the official 1/(1+c^2) and xK belong to the caller);
    c = 0 gives g_0."""
    gram = _gram(gram)
    K = gram.shape[0]
    anchor = torch.full((K,), 1 / K, dtype=F64) if weights is None else vector(weights, K, "weights", "weights", True)
    return _conflict_averse(gram, anchor, c, clip=False)  # weights are taken as given (dpo.py normalises them)


class CAGrad(Method):
    """Conflict-averse gradient descent (cagrad_coeffs) with the official output rescaling. Stateless."""
    name, level = "cagrad", "gradient"
    HELP = {"c": "conflict-aversion radius c in [0, 1) (paper 0.4)",
            "rescale": "0: none, 1: divide by 1 + c^2 (official default), 2: divide by 1 + c"}

    def __init__(self, num_objectives, c=0.4, rescale=1):
        super().__init__(num_objectives)
        self.c = float(c)
        self.divisor = {0: 1.0, 1: 1 + self.c ** 2, 2: 1 + self.c}[choice(rescale, (0, 1, 2), self._flag("rescale"))]

    def _solve(self, gram):
        return cagrad_coeffs(gram, self.c) / self.divisor


def raco_coeffs(gram: torch.Tensor, weights, c: float = 0.4) -> torch.Tensor:
    """Clipped CAGrad (RACO, Chen et al. 2026, arXiv 2602.02495): p* = CAGrad's dual with the weighted anchor
    g_0 = sum w_k g_k, p~ = min(p*, w) NOT renormalised, a = w + c|g_0| p~/|G~| with G~ = sum p~_k g_k (a = w if 0)."""
    gram = _gram(gram)
    w = vector(weights, gram.shape[0], "weights", "--raco-weights", nonneg=True)
    if not w.sum() > 0:
        raise ValueError(f"RACO weights must have a positive sum, got {w.tolist()} (--raco-weights)")
    return _conflict_averse(gram, w / w.sum(), c, clip=True)


class RACO(Method):
    """RACO's clipped CAGrad with user preference weights (raco_coeffs). Stateless."""
    name, level = "raco", "gradient"
    HELP = {"weights": "preference weights, K floats (default uniform; RACO's 2-objective runs use 0.8 0.2)",
            "c": "conflict-aversion radius c in [0, 1)"}

    def __init__(self, num_objectives, weights=None, c=0.4):
        super().__init__(num_objectives)
        self._preferences(weights, None)
        self.c = float(c)

    def _solve(self, gram):
        return raco_coeffs(gram, self.preference, self.c)


METHODS = {m.name: m for m in (Linear, Tchebycheff, SmoothTchebycheff, SmoothTchebycheffMu, Lagrangian, PAMA,
                               Dynamic, MGDA, GradNorm, NashMTL, FAMO, PCGrad, CAGrad, RACO)}


def get_method(name: str, methods: dict | None = None):
    """The class registered under `name` (train.py passes {**METHODS, "ctwa": ctwa.CTWA}); errors list valid names."""
    methods = METHODS if methods is None else methods
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(methods)}")
    return methods[name]


def hyperparameters(cls) -> dict:
    """{name: (default, help, kind)} for every keyword of cls.__init__ but num_objectives: one --<method>-<name> flag
    each. kind: bool, int, float or str, or [float] / [int] for a vector (a None or list/tuple default; ints where the
    annotation says list[int])."""
    params = inspect.signature(cls.__init__).parameters.values()

    def kind(p):
        if p.default is None or isinstance(p.default, (list, tuple)):
            return [int] if "int" in str(p.annotation) else [float]
        return type(p.default)

    return {p.name: (p.default, cls.HELP[p.name], kind(p)) for p in params if p.name not in ("self", "num_objectives")}


if __name__ == "__main__":
    # a conflicting 3-objective example (rows are loss gradients): coefficients and each objective's first-order
    # loss change -lr g_k . d per unit step (negative = improves), every gradient-level method side by side
    G = torch.tensor([[1.0, 0.0, 0.5], [-0.4, 1.0, 0.0], [0.2, -0.6, 1.0]], dtype=F64)
    gram = G @ G.T
    print(f"{'method':<18} {'coefficients c':<24} {'direction d':<24} loss changes -g_k.d")
    for name, c in {"mean": torch.full((3,), 1 / 3, dtype=F64), "mgda": mgda_coeffs(gram), "nash_mtl":
                    nash_mtl_coeffs(gram), "pcgrad (0,1,2)": pcgrad_coeffs(gram, [0, 1, 2]), "cagrad c=0.4":
                    cagrad_coeffs(gram, 0.4), "raco w=.5,.3,.2": raco_coeffs(gram, [0.5, 0.3, 0.2], 0.4)}.items():
        print(f"{name:<18}", *(f"{str(v.numpy().round(3)):<24}" for v in (c, c @ G, -(gram @ c))))
