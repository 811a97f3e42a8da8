"""Every scalarizer against the oracles of spec/scalarizers.md (§1-§14), plus solver properties and bad input.

    python -m pytest -q tests/test_scalarize.py
"""
import itertools
import json
import math

import pytest
import torch

import loss
import scalarize as S

F64 = torch.float64
R = torch.tensor([[0.9, 0.2, 0.5], [0.4, 0.8, 0.6], [0.7, 0.5, 0.9], [0.1, 0.9, 0.3]])
G2 = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=F64)
G3 = torch.tensor([[1.0, 0.0, 0.5], [-0.4, 1.0, 0.0], [0.2, -0.6, 1.0]], dtype=F64)
EXACT, SLSQP = 1e-6, 5e-4  # §14 tolerances; the spec's numbers are rounded to 4 d.p.


def close(x, ref, tol=6e-5):
    assert torch.allclose(torch.as_tensor(x, dtype=F64), torch.tensor(ref, dtype=F64), atol=tol, rtol=0), (x, ref)


def gram(G):
    return G @ G.T


def means(m, n=4):
    """A reward batch whose column means are m."""
    return torch.tensor(m, dtype=torch.float32).expand(n, -1).clone()


def test_linear_oracle():
    """§1: weighted sum of the reward fixture."""
    close(S.Linear(3, weights=[0.5, 0.3, 0.2]).scalarize(R), [0.61, 0.56, 0.68, 0.38])


def test_tchebycheff_oracles():
    """§2: per-sample scores and active objectives at z = batch max; objective level picks argmax lam (z - R)."""
    m = S.Tchebycheff(3, weights=[0.5, 0.3, 0.2])
    close(m.scalarize(R), [-0.21, -0.25, -0.12, -0.40])
    assert m.active.tolist() == [1, 0, 1, 0] and m.z.tolist() == pytest.approx([0.9, 0.9, 0.9])
    m = S.Tchebycheff(3, weights=[0.5, 0.3, 0.2], ideal_point=[1, 1, 1], mode="objective")
    assert torch.equal(m.scalarize(means([0.6, 0.3, 0.8])), means([0.6, 0.3, 0.8])[:, 1]) and m.active == 1
    m = S.Tchebycheff(2)  # the running max only grows
    m.scalarize(torch.tensor([[0.2, 0.9]])), m.scalarize(torch.tensor([[0.5, 0.1]]))
    assert m.z.tolist() == pytest.approx([0.5, 0.9])


def test_smooth_tchebycheff_oracles():
    """§3.1: weights lam*sigma at mu 0.1 and 1, the TCH bounds, and the per-sample form."""
    for mu, ref, val in ((0.1, [0.2167, 0.1437, 0.0175], 0.2836), (1.0, [0.1747, 0.1059, 0.0595], 1.2516)):
        m = S.SmoothTchebycheffMu(3, weights=[0.5, 0.3, 0.2], mu=mu, ideal_point=[1, 1, 1])
        r = means([0.6, 0.3, 0.8])
        close(m.scalarize(r), (r @ torch.tensor(ref)).tolist(), 1e-4)
        close(m.omega, ref, 1e-4)
        assert m.value == pytest.approx(val, abs=1e-4) and m.value - mu * math.log(3) <= 0.21 <= m.value
    for mu, ref in ((0.1, [0.0788, 0.2141, 0.0404]), (1.0, [0.1096, 0.1212, 0.1026])):
        m = S.SmoothTchebycheffMu(3, mu=mu, ideal_point=1.0)
        m.scalarize(means([0.6, 0.3, 0.8]))
        close(m.omega, ref, 1e-4)
    for mu, ref in ((0.05, [-0.2143, -0.2517, -0.1483, -0.4002]), (0.5, [-0.6536, -0.6725, -0.6253, -0.7517])):
        m = S.SmoothTchebycheffMu(3, weights=[0.5, 0.3, 0.2], mu=mu, ideal_point=0.9, mode="sample")
        close(m.scalarize(R), ref, 1e-4)


def test_smooth_tchebycheff_omd_oracle():
    """§3.2: weights used at steps 0-2 and the next ones, for eta 1.0 and 0.3."""
    steps = ([0.6, 0.3, 0.8], [0.65, 0.4, 0.8], [0.7, 0.55, 0.82])
    for eta, used, nxt in ((1.0, [[1 / 3] * 3, [0.3494, 0.3529, 0.2977], [0.3624, 0.3678, 0.2698]],
                            [0.3753, 0.3753, 0.2493]),
                           (0.3, [[1 / 3] * 3, [0.3383, 0.3393, 0.3224], [0.3425, 0.3440, 0.3135]],
                            [0.3467, 0.3467, 0.3066])):
        m = S.SmoothTchebycheff(3, weights=[0.5, 0.3, 0.2], omd_lr=eta, init="uniform", ideal_point=[1, 1, 1])
        for rbar, w in zip(steps, used):
            m.scalarize(means(rbar))
            close(m.w, w, 1e-4)
        close(torch.softmax(m.u, 0), nxt, 1e-4)


def test_lagrangian_oracle():
    """§4: projected dual ascent from the constraint means, then A0 + sum lam_k A_k (and its normalised form)."""
    A = torch.tensor([[1.0, -0.5, 0.2], [-1.0, 0.5, 1.0]])
    for normalize, ref in ((False, [0.9949, -0.9942]), (True, [0.9840, -0.9834])):
        m = S.Lagrangian(3, constraints=[0.9, 0.9], dual_lr=0.01, normalize=normalize)
        for rbar, lam in (([0.5, 0.95], [0.004, 0.0]), ([0.55, 0.92], [0.0075, 0.0]), ([0.6, 0.85], [0.0105, 0.0005])):
            out = m.combine(A, means([0.3] + rbar, 2))
            close(m.multipliers, [0.0] + lam, 1e-9)
        close(out, ref, 1e-4)
    m = S.Lagrangian(2, constraints=[0.9], max_multiplier=0.015)
    for _ in range(5):
        m.combine(A[:, :2], means([0.0, 0.0], 2))
    assert m.multipliers.tolist() == [0.0, 0.015]  # bounded dual domain


def test_pama_oracles():
    """§5: Theorem-1 spot checks, and the CTWA token-level oracle through per-completion weights."""
    for a, s in (([0.3, 0.1], 0.1), ([-0.2, 0.4], 0.0), ([-0.5, -0.1], -0.1)):
        val, c = S.pama_value(torch.tensor(a, dtype=F64))
        assert val == pytest.approx(s) and c.sum() == pytest.approx(1) and (c >= 0).all()
    A = torch.tensor([[0.5, -0.2], [-0.3, 0.4]])  # sequence advantages of the two completions
    weight = torch.tensor([1.0, 3.0]) / 2.5  # unclipped tokens (u <= 1.2) per completion / mean length
    m = S.PAMA(2, variant="official")
    close(m.combine(A, A, weight), [0.1, 0.1], 1e-6)
    close(m.a, [0.1, 0.24], 1e-6)
    assert m.c.tolist() == [1, 0]
    m = S.PAMA(2)  # the paper reading weighs every completion once: a = [0.25, 0.2], c* = [0, 1]
    close(m.combine(A, A, weight), [0.0, 0.4], 1e-6)
    close(m.a, [0.25, 0.2], 1e-6)


def _official_pama_loss(R, mask, old_logp, ref_logp, logp, eps=0.2):
    """A port of the official update_policy_pama, written from its description: per-objective REINFORCE++ advantages
    (reward on the last valid token), a_j = token-mean over the batch of [A_j]_+ 1[pi_old / pi_ref <= 1 + eps],
    s* = the projection of 0 onto [min a, max a], and the loss -s* min(rho, clip(rho)) with rho = pi / pi_ref,
    token-mean, no dual clip, no KL."""
    L = mask.sum(1)
    A = []
    for j in range(R.shape[1]):
        tok = torch.zeros(mask.shape, dtype=torch.float64)
        tok[torch.arange(len(L)), L - 1] = R[:, j]
        A.append(loss.reinforce_pp_advantages(tok, mask))
    A = torch.stack(A, -1)  # (B, T, M)
    inside = (old_logp - ref_logp).clamp(-20, 20).exp() <= 1 + eps  # (B, T)
    a = (mask[..., None] * A.clamp(min=0) * inside[..., None]).sum((0, 1)) / mask.sum()  # (M,)
    s = 0.0 if a.min() <= 0 <= a.max() else float(a.min() if a.min() > 0 else a.max())
    rho = (logp - ref_logp).clamp(-20, 20).exp()
    token = -s * torch.minimum(rho, rho.clamp(1 - eps, 1 + eps))
    return (token * mask).sum() / (mask.sum() + 1e-8), a


def test_pama_official_variant_matches_a_port_of_the_official_update():
    """On random batches: our path (loss.advantages, reference_trust_tokens, PAMA(variant="official").combine,
    loss.policy_loss with the ratio to pi_ref) gives the port's a_j, loss and gradient."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        B, T, M = 12, 7, 3
        L = torch.randint(1, T + 1, (B,), generator=gen)
        mask = torch.arange(T)[None] < L[:, None]
        R = torch.randint(0, 2, (B, M), generator=gen).double()
        ref = -3 * torch.rand(B, T, generator=gen, dtype=F64)
        old = ref + 0.3 * torch.randn(B, T, generator=gen, dtype=F64)  # some tokens leave the trust region
        logp = (old + 0.2 * torch.randn(B, T, generator=gen, dtype=F64)).requires_grad_()
        port_loss, port_a = _official_pama_loss(R, mask, old, ref, logp)
        port_grad, = torch.autograd.grad(port_loss, logp)
        A = torch.stack([loss.advantages(R[:, j], "reinforce_pp", 4, L) for j in range(M)], 1)
        weight = S.reference_trust_tokens(old, ref, mask, 0.2) / L.double().mean()
        m = S.PAMA(M, variant="official")
        adv = m.combine(A, R, weight)
        ours = loss.policy_loss(logp, ref, adv, mask, None, 0.2, 0.2, 3.0)[0]
        ours_grad, = torch.autograd.grad(ours, logp)
        close(m.a, port_a.tolist(), 1e-10)
        assert m.s > 0 and float(ours) == pytest.approx(float(port_loss), abs=1e-7)  # the loss kernel is fp32
        torch.testing.assert_close(ours_grad.double(), port_grad, atol=1e-8, rtol=1e-5)


def test_dynamic_oracle():
    """§6.2: influence = Gram row sums, one softmax step at lr/mu 0.1 and 1 (the lr applied once)."""
    for lr, ref in ((1e-6, [0.3508, 0.3029, 0.3463]), (1e-5, [0.4744, 0.1091, 0.4165])):
        m = S.Dynamic(3, weights=[1 / 3] * 3, mu=1e-5)
        m.observe_gram(gram(G3), lr)
        close(m.weights, ref, 1e-4)
        close(m.scalarize(R), (R @ torch.tensor(ref)).tolist(), 1e-4)
    m = S.Dynamic(3, accumulation_steps=2, mu=1e-5)
    m.observe_gram(gram(G3), 1e-6)
    close(m.weights, [1 / 3] * 3, 1e-12)  # nothing until the second step
    m.observe_gram(gram(G3), 1e-6)
    close(m.weights, [0.3508, 0.3029, 0.3463], 1e-4)


def test_mgda_oracles_and_min_norm():
    """§7 oracles, and on random Grams alpha satisfies the KKT conditions of the min-norm problem and beats a grid."""
    close(S.mgda_coeffs(gram(G2)), [7 / 13, 6 / 13], EXACT)
    close(S.mgda_coeffs(gram(G3)), [0.1791, 0.4858, 0.3351], 1e-4)
    close(S.mgda_coeffs(gram(torch.tensor([[1.0, 0.0], [2.0, 0.5]], dtype=F64))), [1.0, 0.0], EXACT)
    gen = torch.Generator().manual_seed(0)
    grid = torch.tensor([(i, j, 100 - i - j) for i in range(101) for j in range(101 - i)], dtype=F64) / 100
    for K, P in ((3, 5), (3, 2), (4, 6), (5, 3)):
        Kg = gram(torch.randn(K, P, generator=gen, dtype=F64))
        a = S.mgda_coeffs(Kg)
        val = a @ Kg @ a
        assert (a >= 0).all() and a.sum() == pytest.approx(1)
        assert (Kg @ a >= val - 1e-9).all() and torch.allclose((Kg @ a)[a > 1e-9], val, atol=1e-9)  # KKT
        if K == 3:
            assert val <= ((grid @ Kg) * grid).sum(1).min() + 1e-12


def test_nash_oracles_and_property():
    """§9 oracles (alpha, max_norm, ill-conditioned, conflict) and gram alpha = 1/alpha, |d| = sqrt(K) on random."""
    close(S.nash_mtl_coeffs(gram(G2)), [1.3450, 1.2030], 1e-4)
    close(S.nash_mtl_coeffs(gram(G3)), [0.8500, 1.4675, 1.0012], 1e-4)
    close(S.nash_mtl_coeffs(gram(G2), max_norm=1.0) @ G2, [0.5257, 0.8507], 1e-4)
    close(S.nash_mtl_coeffs(gram(G3), max_norm=1.0) @ G3, [0.2675, 0.5004, 0.8234], 1e-4)
    close(S.nash_mtl_coeffs(gram(10 * G3)), [0.0850, 0.14675, 0.10012], 1e-5)
    ill = torch.tensor([[10, 0, 0], [0, 0.1, 0], [0.3, 0.3, 1]], dtype=F64)
    close(S.nash_mtl_coeffs(gram(ill)), [0.0898, 8.9779, 0.7202], 1e-4)
    close(S.nash_mtl_coeffs(gram(torch.tensor([[1.0, 0.0], [-0.9, 0.2]], dtype=F64))), [6.4803, 7.0288], 1e-4)
    close(S.nash_mtl_coeffs(gram(torch.tensor([[1.0, 0.0], [-1.0, 0.1]], dtype=F64))), [14.1950, 14.1246], 1e-4)
    gen = torch.Generator().manual_seed(1)
    for K in (2, 3, 5):
        Kg = gram(torch.randn(K, K + 2, generator=gen, dtype=F64))
        a = S.nash_mtl_coeffs(Kg)
        assert torch.allclose(Kg @ a, 1 / a, rtol=1e-6) and float(a @ Kg @ a) == pytest.approx(K, rel=1e-6)


def test_gradnorm_oracle_and_nan_guard():
    """§8 oracle in both progress modes; negative loss ratios skip the update (counted) instead of NaN."""
    Kg = torch.diag(torch.tensor([4.0, 0.25, 1.0], dtype=F64))  # |g| = [2, 0.5, 1]
    m = S.GradNorm(3)
    m.update(None, [0.0, 0.0, 0.0])  # deficits 1 at the start
    m.update(None, [0.5, 0.1, 0.2])  # deficits [0.5, 0.9, 0.8]
    close(m.coefficients(Kg, None), [0.9540, 1.0167, 1.0293], 1e-4)
    m = S.GradNorm(3, progress="loss")
    m.load_state_dict({"weights": [1.0] * 3, "start": [1.0] * 3, "current": None, "skipped": 0})
    close(m.coefficients(Kg, [0.5, 0.9, 0.8]), [0.9540, 1.0167, 1.0293], 1e-4)
    m = S.GradNorm(3, progress="loss")
    m.coefficients(Kg, [0.03, 0.01, -0.02])
    with pytest.warns(UserWarning, match="skipped"):
        c = m.coefficients(Kg, [-0.01, 0.02, 0.0])
    assert torch.isfinite(c).all() and m.skipped == 1 and torch.isfinite(m.weights).all()


def test_famo_two_step_oracle():
    """§10: effective weights, xi after one and two Adam steps (L* = 0, wd 1e-3)."""
    m = S.FAMO(3, lower_bounds=0.0)
    close(m.coefficients(gram(G3), [2.0, 0.5, 1.0]), [0.1429, 0.5714, 0.2857], 1e-4)
    m.after_step([1.8, 0.45, 0.95])
    close(m.xi, [-0.025, -0.025, 0.025], 1e-6)
    close(torch.softmax(m.xi, 0), [0.3277, 0.3277, 0.3445], 1e-4)
    m.coefficients(gram(G3), [1.8, 0.45, 0.95])
    m.after_step([1.7, 0.44, 0.85])
    close(m.xi, [-0.0336, -0.0146, 0.0201], 1e-4)
    close(m.coefficients(gram(G3), [1.8, 0.45, 0.95]), [0.1413, 0.5761, 0.2825], 1e-4)  # with the new z
    m = S.FAMO(2)  # signed RL losses: the bound follows the loss, logs stay finite
    for L, La in (([0.0, -0.1], [-0.5, -0.2]), ([-2.0, 0.3], [-3.5, 0.1])):
        assert torch.isfinite(m.coefficients(gram(G2), L)).all()
        m.after_step(La)
    assert torch.isfinite(m.xi).all() and m.skipped == 0


def test_pcgrad_oracles():
    """§11: G2 sum, both G3 outcomes by order, and for K = 2 no negative inner product with either input."""
    close(S.pcgrad_coeffs(gram(G2), [0, 1]) @ G2, [0.8, 1.4], EXACT)
    close(S.pcgrad_coeffs(gram(G3), [0, 2, 1]) @ G3, [0.8127, 1.1356, 1.9857], 1e-4)  # g1 visited before g3
    close(S.pcgrad_coeffs(gram(G3), [2, 0, 1]) @ G3, [0.5727, 1.0396, 2.0097], 1e-4)
    outcomes = {tuple((S.pcgrad_coeffs(gram(G3), o) @ G3).round(decimals=4).tolist())
                for o in itertools.permutations(range(3))}
    assert len(outcomes) == 2
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        G = torch.randn(2, 4, generator=gen, dtype=F64)
        d = S.pcgrad_coeffs(gram(G), [1, 0]) @ G
        assert (G @ d >= -1e-12).all()
    m = S.PCGrad(3, seed=5)
    first = [m.coefficients(gram(G3)) for _ in range(4)]
    m2 = S.PCGrad(3, seed=5)
    m2.load_state_dict(json.loads(json.dumps({"step": 2, "skipped": 0})))
    assert torch.equal(m2.coefficients(gram(G3)), first[2])  # resume draws the same order


def test_cagrad_and_raco_oracles():
    """§12-§13: CAGrad w*/d for c 0.4 and 0.5, rescaled forms, c = 0 is the mean; RACO's four cases."""
    close(S.cagrad_coeffs(gram(G2), 0.4), [0.7448, 0.6384], 1e-4)
    close(S.cagrad_coeffs(gram(G2), 0.4) @ G2, [0.4256, 0.6384], 1e-4)
    close(S.cagrad_coeffs(gram(G2), 0.5) @ G2, [0.4579, 0.6868], 1e-4)
    close(S.cagrad_coeffs(gram(G3), 0.4) @ G3, [0.1802, 0.3495, 0.5000], 1e-4)
    close(S.cagrad_coeffs(gram(G3), 0.5) @ G3, [0.1583, 0.3998, 0.5447], 1e-4)
    close(S.CAGrad(3, c=0.4).coefficients(gram(G3)) @ G3, [0.1553, 0.3013, 0.4310], 1e-4)
    close(S.CAGrad(2, c=0.5).coefficients(gram(G2)) @ G2, [0.3663, 0.5495], 1e-4)
    close(S.cagrad_coeffs(gram(G3), 0.0), [1 / 3] * 3, EXACT)
    close(S.cagrad_coeffs(gram(G3), 0.0, [0.5, 0.3, 0.2]), [0.5, 0.3, 0.2], EXACT)  # weighted anchor (dpo.py)
    close(S.cagrad_coeffs(gram(G3), 0.4, [1 / 3] * 3), S.cagrad_coeffs(gram(G3), 0.4), EXACT)
    for G, c, w_star in ((G2, 0.4, [0.6388, 0.3612]), (G3, 0.4, [0, 1, 0]), (G3, 0.5, [0, 0.8678, 0.1322])):
        K = G.shape[0]
        close(S._cagrad_dual(S._normalized(gram(G))[0], torch.full((K,), 1 / K, dtype=F64), c)[0], w_star, 1e-4)
    close(S.raco_coeffs(gram(G2), [0.8, 0.2], 0.4), [0.8, 0.4605], 1e-4)
    close(S.raco_coeffs(gram(G2), [0.5, 0.5], 0.4) @ G2, [0.3981, 0.6675], 1e-4)
    g = torch.tensor([[1.0, -4.0], [-1.0, 1.0]], dtype=F64)
    close(S.raco_coeffs(gram(g), [0.2, 0.8], 0.5), [0.3275, 1.2105], 1e-4)
    close(S.raco_coeffs(gram(G3), [0.5, 0.3, 0.2], 0.4), [0.5, 0.5716, 0.2747], 1e-4)
    close(S.raco_coeffs(gram(G3), [0.5, 0.3, 0.2], 0.4) @ G3, [0.3263, 0.4068, 0.5247], 1e-4)


def _cagrad_dual_value(W, H, p, s):
    return W @ (H @ p) + s * ((W @ H) * W).sum(-1).clamp(min=0).sqrt()


def test_cagrad_dual_beats_grid():
    """The exact CAGrad dual is no worse than a fine simplex grid on random 3-objective Grams."""
    gen = torch.Generator().manual_seed(3)
    grid = torch.tensor([(i, j, 200 - i - j) for i in range(201) for j in range(201 - i)], dtype=F64) / 200
    for P in (5, 2):
        H = gram(torch.randn(3, P, generator=gen, dtype=F64))
        p = torch.full((3,), 1 / 3, dtype=F64)
        w, s = S._cagrad_dual(H, p, 0.5)
        assert _cagrad_dual_value(w, H, p, s) <= _cagrad_dual_value(grid, H, p, s).min() + 1e-12


SOLVERS = {"mgda": S.mgda_coeffs, "nash": S.nash_mtl_coeffs, "cagrad": S.cagrad_coeffs,
           "raco": lambda g: S.raco_coeffs(g, torch.full((g.shape[0],), 1 / g.shape[0])),
           "pcgrad": lambda g: S.pcgrad_coeffs(g, range(g.shape[0]))}


@pytest.mark.parametrize("name", SOLVERS)
def test_solvers_permutation_invariant_and_finite_on_degenerate(name):
    """Permuting objectives permutes c (PCGrad with the order permuted too); zero, duplicate, K = 1 stay finite."""
    solve = SOLVERS[name]
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(3, 5, generator=gen, dtype=F64)
    perm = [2, 0, 1]
    c = solve(gram(G))
    cp = S.pcgrad_coeffs(gram(G[perm]), [perm.index(j) for j in range(3)]) if name == "pcgrad" else solve(gram(G[perm]))
    close(cp, c[perm].tolist(), 1e-8)
    for _ in range(5):  # bitwise repeatable, so DDP ranks solving the same all-reduced Gram agree exactly
        junk = [torch.empty(n) for n in range(1, 9)]  # noqa: F841 (shifts allocations, which broke LAPACK gelsy)
        assert torch.equal(solve(gram(G)), c)
    zero = torch.tensor([[0.0, 0.0], [1.0, 0.5]], dtype=F64)
    for G in (zero, torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64), torch.tensor([[1.0, 0.0], [-1.0, 0.0]]),
              torch.tensor([[0.7, -0.2]]), torch.zeros(3, 4), torch.cat([G3, G3[:1]])):
        c = solve(gram(G.double()))
        assert c.shape == (G.shape[0],) and torch.isfinite(c).all() and torch.isfinite(c @ G.double()).all()


def _step(m, R, G):
    """One step of any method on rewards R (N, K) and gradients G (K, P), as train.py drives it; returns its signal."""
    K = R.shape[1]
    if m.needs_gram:
        m.observe_gram(gram(G), 1e-6)
    if m.level == "reward":
        out = m.scalarize(R)
    elif m.level == "advantage":
        out = m.combine(R - 0.5, R)
    else:
        out = m.coefficients(gram(G), torch.linspace(0.3, -0.2, K))
        if m.needs_losses_after:
            m.after_step(torch.linspace(0.2, -0.3, K))
    m.update(torch.zeros(K) if m.needs_statistic else None, R.mean(0))
    return out


def test_every_method_roundtrips_state_and_logs():
    """Each registered method runs one step on the fixtures, logs floats, resumes exactly from JSON state, and with a
    single objective gives that objective's own signal (the whole weight, or a multiple of its own gradient)."""
    for name, cls in S.METHODS.items():
        assert name == cls.name and set(S.hyperparameters(cls)) == set(cls.HELP)
        assert cls.level in ("reward", "advantage", "gradient") and cls.needs_statistic in (None, "cov", "corr")
        a = cls(3)
        _step(a, R, G3)
        assert all(isinstance(v, float) for v in a.metrics().values())
        b = cls(3)
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        assert torch.equal(_step(a, R, G3), _step(b, R, G3)) and a.state_dict() == b.state_dict(), name
        one = cls(1)
        out = _step(one, R[:, :1], G3[:1])
        if one.level == "reward" and name != "tchebycheff":  # a weighted sum with one positive weight on r_0
            ratio = out / R[:, 0]
            assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and ratio[0] > 0, name
        elif name == "tchebycheff":  # -w (z - r): r_0 shifted and scaled
            assert torch.allclose(out - out[0], R[:, 0] - R[0, 0]), name
        elif one.level == "gradient":  # d = c g_0 with c > 0: the objective's own descent direction
            assert out.shape == (1,) and out[0] > 0, name
        else:  # advantage level: the objective's own advantage, clamped at 0 by PAMA's Noon
            A = (R[:, :1] - 0.5).clamp(min=0 if one.ratio_to_reference else -1)[:, 0]
            assert torch.allclose(out, A * (out @ A) / (A @ A)), name


def test_bad_input():
    """Unknown names list the valid ones; wrong lengths name the flag; NaN inputs never reach the weights."""
    with pytest.raises(ValueError, match="valid methods: linear, tchebycheff"):
        S.get_method("lineer")
    for make, flag in ((lambda: S.Linear(3, weights=[0.5, 0.5]), "--linear-weights"),
                       (lambda: S.Lagrangian(3, constraints=[0.9, 0.9, 0.9]), "--lagrangian-constraints"),
                       (lambda: S.RACO(3, weights=[1, 0, 0, 0]), "--raco-weights"),
                       (lambda: S.Tchebycheff(3, ideal_point=[1, 1]), "--tchebycheff-ideal-point")):
        with pytest.raises(ValueError, match=f"has [0-9] entries, expected [23].*{flag}"):
            make()
    with pytest.raises(ValueError, match="one of"):
        S.PAMA(2, variant="ctwa")
    bad = R.clone()
    bad[1, 2] = float("nan")
    for m in (S.Linear(3), S.SmoothTchebycheff(3)):
        with pytest.raises(ValueError, match="NaN or inf"):
            m.scalarize(bad)
    m = S.Dynamic(3)
    with pytest.warns(UserWarning, match="non-finite Gram"):
        m.observe_gram(torch.full((3, 3), float("inf")), 1e-6)
    assert torch.equal(m.weights, torch.full((3,), 1 / 3, dtype=F64)) and m.skipped == 1
    nan_gram = torch.tensor(float("nan")).expand(3, 3)
    for solve in list(SOLVERS.values()):
        with pytest.raises(ValueError, match="NaN or inf"):
            solve(nan_gram)
    for name in ("mgda", "nash_mtl", "pcgrad", "cagrad", "raco", "famo", "gradnorm"):
        m = S.METHODS[name](3)
        m.coefficients(gram(G3), [0.3, 0.2, 0.1])
        state = m.state_dict()
        with pytest.warns(UserWarning, match="non-finite Gram"):
            c = m.coefficients(nan_gram, [0.3, 0.2, 0.1])
        assert torch.equal(c, torch.zeros(3, dtype=F64)) and m.state_dict()["skipped"] == 1
        assert {k: v for k, v in m.state_dict().items() if k not in ("skipped", "before")} == \
            {k: v for k, v in state.items() if k not in ("skipped", "before")}, name
    m = S.FAMO(3)
    m.coefficients(gram(G3), [0.1, 0.2, 0.3])
    xi = m.xi.clone()
    with pytest.warns(UserWarning, match="skipped"):
        m.after_step([float("nan"), 0.1, 0.1])
    assert torch.equal(m.xi, xi) and m.metrics()["skipped"] == 1.0
