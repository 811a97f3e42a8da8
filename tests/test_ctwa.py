"""CTWA against spec/ctwa-reference.md §13.1-13.2, its bad-input handling, and the covariance law on exact toys.

    python -m pytest -q tests/test_ctwa.py
"""
import json
import math

import pytest
import torch

import ctwa
import kernels
import scalarize

F64 = torch.float64
LENGTHS = [4, 2, 3, 1, 4, 3, 2, 4]
ADV = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.75, -0.25, -0.75, 0.5])
NEW_LOGP = torch.tensor([[0.0, 0.3, -0.1, 0.2], [0.1, -0.3, 0.0, 0.0], [-0.2, 0.0, 0.25, 0.0], [0.4, 0.0, 0.0, 0.0],
                         [0.0, 0.1, 0.2, 0.3], [-0.1, -0.25, 0.05, 0.0], [0.3, -0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.5]])
U = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]]).float()
MASK = torch.arange(4)[None, :] < torch.tensor(LENGTHS)[:, None]  # (8, 4)
# spec §13.1, per-group statistics: (eps, w_agg) -> w_mean, w_std, unclip_frac, cov_mean, corr_mean
SPEC_13_1 = {
    (0.2, "mean"): (-0.129979, 0.611934, 0.608696, [0.129526, 0.162677, -0.071645], [0.294928, 0.66199, -0.151531]),
    (0.2, "mean_unclipped"): (-0.104015, 0.818617, 0.608696, [0.171608, 0.231586, -0.114492],
                              [0.358039, 0.650056, -0.266992]),
    (0.2, "sum"): (0.236571, 1.220924, 0.608696, [0.247465, 0.325182, -0.117834], [0.389328, 0.587218, -0.198878]),
    (100, "mean"): (-0.016216, 0.831309, 1.0, [0.19191, 0.230113, -0.115443], [0.38482, 0.640426, -0.231107]),
    (100, "mean_unclipped"): (-0.016216, 0.831309, 1.0, [0.19191, 0.230113, -0.115443],
                              [0.38482, 0.640426, -0.231107]),
    (100, "sum"): (0.802115, 2.213527, 1.0, [0.497831, 0.574702, -0.273518], [0.42931, 0.569751, -0.24849]),
}


def close(x, ref, tol=2e-6):
    assert torch.allclose(torch.as_tensor(x, dtype=F64), torch.tensor(ref, dtype=F64), atol=tol, rtol=0), (x, ref)


@pytest.mark.parametrize("eps,w_agg", list(SPEC_13_1))
def test_statistic_matches_spec(eps, w_agg):
    """§13.1: completion weights and per-prompt covariance/correlation of the official compute_ctwa_stats."""
    w_mean, w_std, unclip, cov, corr = SPEC_13_1[eps, w_agg]
    adv = ADV[:, None] * MASK  # per-token advantages (N, T); the sequence advantage is recovered from them
    w, frac = ctwa.completion_weights(NEW_LOGP, torch.zeros(8, 4), adv, MASK, eps, eps, w_agg)
    stats = ctwa.covariance_statistic(U, w, group_size=4)
    assert frac == pytest.approx(unclip, abs=1e-6) and stats["n_groups"] == 2
    assert stats["w_mean"] == pytest.approx(w_mean, abs=2e-6) and stats["w_std"] == pytest.approx(w_std, abs=2e-6)
    close(stats["cov"], cov)
    close(stats["corr"], corr)


def test_completion_weight_agrees_with_the_loss_kernel():
    """W from kernels.grpo_loss (the loss the policy is trained with) aggregates to the same completion weights."""
    w, _ = ctwa.completion_weights(NEW_LOGP, torch.zeros(8, 4), ADV, MASK, 0.2, 0.2)
    _, W, _ = kernels.grpo_loss(NEW_LOGP, torch.zeros(8, 4), ADV, MASK, eps_low=0.2, eps_high=0.2, clip_c=None)
    close(w, (W.sum(1) / MASK.sum(1)).tolist(), 1e-6)
    w_none, frac = ctwa.completion_weights(NEW_LOGP, torch.zeros(8, 4), ADV, MASK, None, None)
    w_100, _ = ctwa.completion_weights(NEW_LOGP, torch.zeros(8, 4), ADV, MASK, 100, 100)
    assert frac == 1.0 and torch.allclose(w_none, w_100)
    with pytest.raises(ValueError, match="w_agg must be one of"):
        ctwa.completion_weights(NEW_LOGP, NEW_LOGP, ADV, MASK, w_agg="median")


def test_outliers_nonfinite_and_small_groups_are_dropped():
    """|w| > 100 x median and non-finite w leave the statistic; groups left with < 2 members are skipped."""
    w = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.3, -0.2, 0.1, 0.4, 1.0, 2.0, 0.5, -0.5])
    r = torch.rand(12, 2, generator=torch.Generator().manual_seed(0))
    base = ctwa.covariance_statistic(r[:8], w[:8], 4)
    w_bad = w.clone()
    w_bad[8:] = torch.tensor([1e6, float("nan"), float("inf"), 0.7])  # third group keeps one member only
    stats = ctwa.covariance_statistic(r, w_bad, 4)
    assert stats["n_groups"] == 2
    close(stats["cov"], base["cov"].tolist(), 1e-6)
    with pytest.raises(ValueError, match="divisible by group_size"):
        ctwa.covariance_statistic(r, w, 5)
    zero = ctwa.covariance_statistic(r[:4], torch.zeros(4), 4)  # constant w: cov 0, correlation undefined -> 0
    assert zero["cov"].abs().max() == 0 and zero["corr"].abs().max() == 0


def test_weight_update_matches_spec_table():
    """§13.2: EMA, gated deficit and log-space weights over three steps; the sum drifts above 1 (no renormalising)."""
    m = ctwa.CTWA([0.333, 0.333, 0.334], [0.15, 0.08, 0.08], 0.05, 0.1, [1.0, 0.95, 0.95])  # the contract's order
    table = [([0.05, 0.10, -0.02], [0.40, 0.50, 0.96], [0.05, 0.10, -0.02], [0.1, 0, 0],
              [0.33466914, 0.33299997, 0.33399996]),
             ([0.00, 0.20, 0.10], [0.50, 0.50, 0.50], [0.045, 0.11, -0.008], [0.105, 0, 0.088],
              [0.33643079, 0.33299997, 0.33547282]),
             ([-0.10, 0.05, 0.02], [0.55, 0.40, 0.97], [0.0305, 0.104, -0.0052], [0.1195, 0, 0],
              [0.33844697, 0.33299997, 0.33547282])]
    for cov, obj, ema, deficit, weights in table:
        m.update(cov, obj)
        close(m.ema, ema, 1e-9)
        close(m.deficit, deficit, 1e-9)
        close(m.weights, weights, 1e-7)
    assert float(m.weights.sum()) == pytest.approx(1.00691974, abs=1e-7)
    close(m.scalarize(U[:2]), (U[:2].double() @ m.weights).tolist(), 1e-6)
    metrics = m.metrics()
    assert metrics["weight/0"] == pytest.approx(0.33844697, abs=1e-7) and "deficit/2" in metrics


def test_ctwa_construction_state_and_bad_input():
    """Defaults are the paper's run; K follows the vectors (K = 1 too); wrong lengths and NaN never reach the weights;
    CTWA is a scalarize.Method that declares what the loop gives it."""
    m = ctwa.CTWA(num_objectives=3)
    close(m.weights, [1 / 3] * 3, 1e-12)
    assert (m.cov_targets.tolist(), m.lambda_lr, m.ema_tau) == ([0.15, 0.08, 0.08], 0.05, 0.1)
    assert m.obj_targets.tolist() == [1.0, 0.95, 0.95]
    assert isinstance(m, scalarize.Method) and m.level == "reward" and not m.clipped
    assert (m.needs_statistic, m.w_agg) == ("cov", "mean")
    assert ctwa.CTWA(signal="corr", num_objectives=3).needs_statistic == "corr"
    assert ctwa.CTWA([0.5, 0.5], cov_targets=0.1, obj_targets=float("inf")).K == 2
    assert ctwa.CTWA(cov_targets=[0.1, 0.2, 0.3, 0.4]).K == 4  # K from any vector argument
    one = ctwa.CTWA(init_weights=[1.0])  # K = 1: the paper's first-objective targets
    assert one.K == 1 and one.cov_targets.tolist() == [0.15] and one.obj_targets.tolist() == [1.0]
    one.update([0.05], [0.4])
    close(one.weights, [math.exp(0.05 * 0.1)], 1e-12)  # deficit 0.15 - 0.05, lambda 0.05
    assert ctwa.CTWA(num_objectives=2).cov_targets.tolist() == [0.15, 0.08]
    methods = {**scalarize.METHODS, "ctwa": ctwa.CTWA}
    assert scalarize.get_method("ctwa", methods) is ctwa.CTWA
    assert set(scalarize.hyperparameters(ctwa.CTWA)) == set(ctwa.CTWA.HELP)
    with pytest.raises(ValueError, match="cannot tell the number of objectives"):
        ctwa.CTWA()
    with pytest.raises(ValueError, match="cov_targets has 3 entries, expected 2.*--ctwa-cov-targets"):
        ctwa.CTWA([0.5, 0.5], cov_targets=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="init_weights has 2 entries, expected 3"):
        ctwa.CTWA([0.5, 0.5], num_objectives=3)
    with pytest.raises(ValueError, match="w-agg"):
        ctwa.CTWA(num_objectives=3, w_agg="max")
    with pytest.raises(ValueError, match="--ctwa-signal"):
        ctwa.CTWA(num_objectives=3, signal="grad_norm")
    m.update(torch.tensor([0.0, 0.1, 0.2]), torch.tensor([0.5, 0.5, 0.5]))
    before = m.weights.clone()
    with pytest.warns(UserWarning, match="skipped"):
        m.update(torch.tensor([float("nan"), 0.1, 0.2]), torch.tensor([0.5, 0.5, 0.5]))
    assert torch.equal(m.weights, before) and m.metrics()["skipped"] == 1.0
    with pytest.raises(ValueError, match="NaN or inf"):
        m.scalarize(torch.full((2, 3), float("inf")))
    m2 = ctwa.CTWA(num_objectives=3)
    m2.load_state_dict(json.loads(json.dumps(m.state_dict())))
    for t in (m, m2):
        t.update(torch.tensor([0.3, -0.1, 0.0]), torch.tensor([0.2, 0.9, 0.99]))
    assert m.state_dict() == m2.state_dict()


def _instance(seed, n=7, K=3):
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(torch.randn(n, generator=gen, dtype=F64), 0)
    R = torch.randint(0, 2, (n, K), generator=gen).double()
    return pi, R, R @ torch.rand(K, generator=gen, dtype=F64)


def test_first_order_error_shrinks_with_eta():
    """Thm 4.2: |realised - eta Cov| / eta halves when eta halves (the error is O(eta^2)), over three step sizes."""
    for seed in range(5):
        pi, R, s = _instance(seed)
        rel = []
        for eta in (0.2, 0.1, 0.05):
            real, pred = ctwa.first_order_check(pi, R, s, eta)
            rel.append(float((real - pred).abs().max()) / eta)
        assert 1.7 < rel[0] / rel[1] < 2.3 and 1.7 < rel[1] / rel[2] < 2.3, rel


def test_covariance_sign_predicts_change():
    """For small eta every objective moves in the direction of the sign of Cov(r_k, s)."""
    seen = set()
    for seed in range(20):
        pi, R, s = _instance(seed)
        real, pred = ctwa.first_order_check(pi, R, s, 1e-3)
        for r, p in zip(real.tolist(), pred.tolist()):
            if abs(p) > 1e-6:
                assert math.copysign(1, r) == math.copysign(1, p)
                seen.add(p > 0)
    assert seen == {True, False}  # both signs were exercised


def test_natural_gradient_step_is_the_kl_step():
    """Cor. C.3: the natural-gradient step on the categorical logits gives the same policy as Lemma 4.1's tilt."""
    pi, _, s = _instance(7)
    z = pi.log() + 0.3
    close(torch.softmax(ctwa.natural_gradient_step(z, s, 0.5), 0), ctwa.kl_step(pi, s, 0.5).tolist(), 1e-12)


def test_two_mode_objective_falls_monotonically():
    """§4.2: a score favouring the bad mode drives P(bad) up and J_k down every step, with Cov by eq. (5) < 0."""
    rows = ctwa.two_mode(p_bad=0.1, s_good=0.2, s_bad=0.9, eta=0.7, steps=12)
    for (p0, J0, _), (p1, J1, _) in zip(rows, rows[1:]):
        assert p1 > p0 and J1 < J0
        assert math.log(p1 / (1 - p1)) - math.log(p0 / (1 - p0)) == pytest.approx(0.7 * (0.9 - 0.2))  # eq. (4)
    for p, _, cov in rows:
        assert cov < 0 and cov == pytest.approx(p * (1 - p) * (0.9 - 0.2) * (0.0 - 1.0))


def test_lesson_prints(capsys):
    """`python ctwa.py` runs and shows the law, the natural-gradient check and the two-mode table."""
    ctwa.lesson()
    out = capsys.readouterr().out
    assert "predicted eta*Cov" in out and "two-mode" in out and out.count("\n") > 20
