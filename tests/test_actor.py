"""actor.py's policy update against independent references on a tiny model: FAMO's per-mini-batch logit updates,
dynamic weighting's target layers, and a gradient-level update with fixed coefficients equal to the advantage-level
combination sum_k c_k A_k.

    python -m pytest -q tests/test_actor.py
"""
import copy

import pytest
import torch

import loss
import rollout
import scalarize
from actor import Actor, chunks, micro_batches
from model import ModelConfig, Transformer

K, G = 3, 4
SETTINGS = dict(temperature=1.0, eps_low=0.2, eps_high=0.2, clip_c=3.0, kl_coef=0.0, kl_type="k3", entropy_coef=0.0,
                ppo_epochs=1, grad_clip=1.0, fsdp=False)


@pytest.fixture(scope="module")
def case():
    """A random 2-layer model, a rollout of 4 prompts x G=4 (rows prompt-major) and per-objective advantages."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 40, (n,), generator=g).tolist() for n in (3, 5, 2, 4)]
    batch = rollout.generate(model, prompts, 6, group_size=G, eos_ids=(1,), generator=g)
    N = batch.sequences.size(0)
    rewards = torch.randint(0, 2, (N, K), generator=g).float()
    lengths = batch.completion_mask.sum(1)
    objective_adv = torch.stack([loss.advantages(rewards[:, k], "reinforce_pp", G, lengths) for k in range(K)], 1)
    return model, batch, objective_adv


def actor_for(model, method, mini_batches=1, micro_batch=5, remove_padding=False):
    # plain SGD: the weights then differ from a reference's exactly as the gradients do (Adam's first step is ~lr *
    # sign(g), which turns rounding in a gradient of ~1e-9 into a visible difference)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Actor(model, optimizer, method, micro_batch=micro_batch, mini_batches=mini_batches,
                 remove_padding=remove_padding, **SETTINGS)


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_famo_updates_per_mini_batch_on_the_same_mini_batch(case):
    """Two mini-batches: FAMO's coefficients from each mini-batch's losses, its logit step from the same mini-batch's
    losses after that optimizer step; a reference written out with torch.autograd.grad on whole mini-batches."""
    model, batch, A = case
    ours, reference = copy.deepcopy(model), copy.deepcopy(model)
    famo, famo_ref = scalarize.FAMO(K), scalarize.FAMO(K)
    actor_for(ours, famo, mini_batches=2, micro_batch=3).update(batch, None, A, batch.logprobs, None)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ps, mask, N = list(reference.parameters()), batch.completion_mask, batch.sequences.size(0)

    def losses(rows):  # (K,) token-mean policy losses of a whole mini-batch against the sampler's log-probs
        logp = rollout.completion_logprobs(reference, batch, rows)
        return torch.stack([loss.policy_loss(logp, batch.logprobs[rows], A[rows, k], mask[rows])[0] for k in range(K)])

    for rows in (torch.arange(N // 2), torch.arange(N // 2, N)):
        L = losses(rows)
        grads = [torch.cat([g.flatten() for g in torch.autograd.grad(L[k], ps, retain_graph=True)]) for k in range(K)]
        Gm = torch.stack(grads)  # (K, P)
        c = famo_ref.coefficients(Gm.double() @ Gm.double().T, L.detach())
        direction = c.float() @ Gm
        offset = 0
        for p in ps:
            p.grad = direction[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()
        with torch.no_grad():
            famo_ref.after_step(losses(rows))
    assert famo.t == famo_ref.t == 2  # two logit updates per step, one per mini-batch
    torch.testing.assert_close(famo.xi, famo_ref.xi, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(params(ours), params(reference), rtol=1e-5, atol=1e-6)


def test_dynamic_target_layers_restrict_the_gram(case):
    """Scaling the gradients of layer 1 changes the all-parameter Gram and dynamic weighting's step, but not the Gram
    over target layer 0 nor the weights it gives."""
    model, batch, A = case
    grams, weights = {}, {}
    for layers in (None, [0]):
        for scale in (1.0, 3.0):
            net = copy.deepcopy(model)
            hooks = [p.register_hook(lambda g: g * scale) for p in net.model.layers[1].parameters()]
            method = scalarize.Dynamic(K, mu=1e-3, target_layers=layers)
            actor = actor_for(net, method)
            grams[layers is None, scale] = gram = actor.gram(batch, A, batch.logprobs, None)
            method.observe_gram(gram, 1e-2)
            weights[layers is None, scale] = method.weights
            for h in hooks:
                h.remove()
    assert not torch.allclose(grams[True, 1.0], grams[True, 3.0], rtol=1e-3)  # layer 1 is part of the full Gram
    assert not torch.allclose(weights[True, 1.0], weights[True, 3.0], rtol=1e-6)
    torch.testing.assert_close(grams[False, 1.0], grams[False, 3.0])
    torch.testing.assert_close(weights[False, 1.0], weights[False, 3.0])
    with pytest.raises(ValueError, match="target layers \\[7\\] do not exist"):
        actor_for(copy.deepcopy(model), scalarize.Dynamic(K, target_layers=[0, 7]))


class FixedCoefficients(scalarize.Method):
    """A gradient-level method that always returns the same coefficients."""
    name, level = "fixed", "gradient"

    def __init__(self, num_objectives, c=(0.5, -0.2, 1.3)):
        super().__init__(num_objectives)
        self.c = torch.tensor(c, dtype=torch.float64)

    def _solve(self, gram):
        return self.c


def test_fixed_coefficients_equal_the_advantage_combination(case):
    """On policy the loss is linear in the advantage, so sum_k c_k g_k is the gradient of the loss with advantage
    sum_k c_k A_k: one update each way gives the same weights, and the update follows that advantage."""
    model, batch, A = case
    c = torch.tensor([0.5, -0.2, 1.3])
    grad_level, adv_level = copy.deepcopy(model), copy.deepcopy(model)
    followed, _ = actor_for(grad_level, FixedCoefficients(K)).update(batch, None, A, batch.logprobs, None)
    actor_for(adv_level, scalarize.Linear(K)).update(batch, A @ c, None, batch.logprobs, None)
    torch.testing.assert_close(followed, A @ c)
    torch.testing.assert_close(params(grad_level), params(adv_level), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(params(grad_level), params(model))  # the update did move the weights


def test_shared_forward_gradients_equal_one_forward_per_objective(case):
    """In one process the K per-objective gradients share each micro-batch's forward (K backward passes through one
    graph); they, their Gram and the losses are bit-identical to one forward + backward per objective (the path DDP
    and FSDP take)."""
    model, batch, A = case
    shared, separate = (actor_for(copy.deepcopy(model), FixedCoefficients(K)) for _ in range(2))
    separate.fsdp = True  # takes the per-objective path (its all-reduces are no-ops in one process)
    micro = [torch.arange(0, 7), torch.arange(7, batch.sequences.size(0))]
    tokens = batch.completion_mask.sum().float()
    one = shared.objective_gradients(batch, micro, tokens, A, batch.logprobs, None, shared.params)
    other = separate.objective_gradients(batch, micro, tokens, A, batch.logprobs, None, separate.params)
    for x, y in zip(one, other):
        assert torch.equal(x, y)
    assert all(p.grad is None for p in shared.params)  # the shared path leaves .grad alone


def test_update_keeps_the_gradients_batch_gradients_computes(case):
    """A gradient-level update on one mini-batch takes its first step's per-objective gradients on the whole batch at
    the weights before the update: exactly batch_gradients' (the law test's), so train.py keeps them from the update
    instead of computing them twice (with and without --remove-padding)."""
    model, batch, A = case
    for remove_padding in (False, True):
        actor = actor_for(copy.deepcopy(model), FixedCoefficients(K), remove_padding=remove_padding)
        g, _ = actor.batch_gradients(batch, A, batch.logprobs, None)
        _, stats = actor.update(batch, None, A, batch.logprobs, None, keep_gradients=True)
        assert torch.equal(stats["gradients"], g) and g.abs().sum() > 0
    with pytest.raises(ValueError, match="one mini-batch"):
        actor_for(copy.deepcopy(model), FixedCoefficients(K), mini_batches=2).update(batch, None, A, batch.logprobs,
                                                                                      None, keep_gradients=True)


def test_remove_padding_gives_the_same_update(case):
    """--remove-padding regroups rows into micro-batches by length and cuts each forward to its longest row: only the
    float summation order changes, so the update equals the padded one up to rounding, for an advantage-level and a
    gradient-level method (whose per-objective gradients use the same micro-batches)."""
    model, batch, A = case
    for method, adv, objective_adv in ((scalarize.Linear(K), A.mean(1), None), (FixedCoefficients(K), None, A)):
        padded, packed = copy.deepcopy(model), copy.deepcopy(model)
        actor_for(padded, method).update(batch, adv, objective_adv, batch.logprobs, None)
        actor_for(packed, method, remove_padding=True).update(batch, adv, objective_adv, batch.logprobs, None)
        torch.testing.assert_close(params(packed), params(padded), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(params(packed), params(model))


def test_old_logprobs_come_from_the_update_micro_batches(case):
    """Off-policy (2 mini-batches) with --remove-padding: the old log-probs are computed on the very micro-batches the
    update differentiates (sorted by length within each mini-batch, each cut to its longest row), so the first epoch's
    ratio is exactly 1 rather than 1 up to rounding."""
    model, batch, _ = case
    actor = actor_for(copy.deepcopy(model), scalarize.Linear(K), mini_batches=2, micro_batch=3, remove_padding=True)
    old = actor.logprobs(batch)
    n = batch.sequences.size(0)
    for mb in chunks(n, n // 2):
        for rows in micro_batches(batch, mb, 3, by_length=True):
            logp = rollout.completion_logprobs(actor.model, batch, rows, remove_padding=True)  # with autograd
            assert torch.equal(logp.detach(), old[rows])


def test_first_order_change_matches_finite_differences(case):
    """Statistic (b) of the covariance-law test: <-g_k, step> predicts the change of objective k's surrogate for a
    plain-SGD step, with an error that shrinks like the step squared (halving the step quarters it)."""
    model, batch, A = case
    rows = [torch.arange(batch.sequences.size(0))]
    tokens = batch.completion_mask.sum().float()
    errors = []
    for lr in (0.4, 0.2, 0.1):
        net = copy.deepcopy(model)
        optimizer = torch.optim.SGD(net.parameters(), lr=lr)
        actor = Actor(net, optimizer, scalarize.Linear(K), micro_batch=64, mini_batches=1,
                      **{**SETTINGS, "eps_low": None, "eps_high": None, "clip_c": None, "grad_clip": 0.0})
        surrogate = lambda: -actor.objective_losses(batch, rows, tokens, A, batch.logprobs, None)  # noqa: E731
        g, _ = actor.batch_gradients(batch, A, batch.logprobs, None)
        before, value_before = actor.flat_parameters(), surrogate()
        actor.update(batch, A @ torch.tensor([0.6, 0.3, 0.1]), None, batch.logprobs, None)
        predicted, cosine = actor.first_order_change(g, before)
        realised = surrogate() - value_before  # (K,)
        assert (predicted.sign() == realised.sign()).all() and (cosine.abs() <= 1).all()
        errors.append((predicted - realised.double()).abs().max().item())
        if lr == 0.1:
            assert errors[-1] < 0.05 * realised.abs().max().item()
    assert errors[0] / errors[1] > 3 and errors[1] / errors[2] > 3  # O(step^2): ~4x per halving
