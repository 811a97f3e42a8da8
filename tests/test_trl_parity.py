"""Our GRPO step equals TRL's GRPOTrainer on one fixed batch: advantages, log-probs, loss and gradients.

The batch: a tiny random Qwen2 model (HF transformers, saved with save_pretrained and loaded by both sides), 2 ragged
prompts x G=4 fixed completions (some ending in EOS, one truncated), and fixed rewards on K=3 objectives. TRL runs
its own code end to end: `rollout_func` (TRL's public hook for custom generation) hands it the fixed token ids, then
`_generate_and_score_completions` pads them, calls the three reward functions, sums them with `reward_weights` and
computes the group advantages, and `compute_loss` computes the loss, which we backpropagate. Our side: train.py's
log-prob path (rollout.completion_logprobs on model.py), scalarize's linear method, loss.grpo_advantages and
loss.policy_loss.

Settings that make the two the same algorithm (C = completion width, as in rollout.py; two TRL 1.16 defaults changed):
- loss_type="dapo" (TRL's default): Σ token losses / tokens of the whole generation batch = our (verl's) token-mean.
- bf16=False: TRL defaults to bf16 autocast even on CPU; ours keeps fp32 on CPU.
- use_bias_correction_kl=False: TRL multiplies the k3 KL by the importance ratio by default; verl and we do not.
- TRL has no dual clip, so ours runs with clip_c=None; TRL's group std epsilon is 1e-4, verl's and ours 1e-6.

    python -m pytest -q tests/test_trl_parity.py        # skipped when trl is not installed (pip install trl)
"""
import warnings

import pytest
import torch

import arith
import loss
import rollout
import scalarize
import tasks
from model import Transformer

trl = pytest.importorskip("trl", reason="TRL parity needs the trl package (pip install trl; Python >= 3.11)")
transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets", reason="TRL's trainer needs the datasets package")

G, C, TEMPERATURE, BETA, EPS_LOW, EPS_HIGH = 4, 6, 0.7, 0.04, 0.2, 0.28
WEIGHTS = [0.5, 0.3, 0.2]
REWARDS = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0],  # prompt 0: four different scores
                        [1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.float32)  # prompt 1: all equal


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(model dir, tokenizer, prompts, completions): the fixed batch, rows prompt-major."""
    tok = arith.tokenizer()
    cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("qwen2"))
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    g = torch.Generator().manual_seed(0)
    first = len(arith.SPECIAL)  # ordinary tokens only, so nothing but the EOS we place ends a completion
    prompts = [torch.randint(first, len(tok), (n,), generator=g).tolist() for n in (5, 3)]
    completions = []
    for n in (4, 6, 2, 6, 1, 5, 6, 3):  # length 6 = C: truncated, no EOS
        c = torch.randint(first, len(tok), (n,), generator=g).tolist()
        completions.append(c[:-1] + [tok.eos_token_id] if n < C else c)
    assert len({tuple(c) for c in completions}) == len(completions)  # the reward lookup needs distinct completions
    return path, tok, prompts, completions


def trl_batch(case, tmp_path, **config):
    """TRL's trainer and its prepared inputs (padding, rewards, advantages) for the fixed batch."""
    path, tok, prompts, completions = case

    def rollout_func(prompt_texts, trainer):
        assert len(prompt_texts) == len(completions)
        return {"prompt_ids": [prompts[i // G] for i in range(len(completions))], "completion_ids": completions,
                "logprobs": [[0.0] * len(c) for c in completions]}

    reward_of = {tuple(c): REWARDS[i] for i, c in enumerate(completions)}

    def objective(k):
        def reward(completion_ids, **kwargs):
            return [reward_of[tuple(c)][k].item() for c in completion_ids]
        reward.__name__ = tasks.OBJECTIVES[k]
        return reward

    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(completions), num_generations=G,
                          max_completion_length=C, temperature=TEMPERATURE, beta=BETA, epsilon=EPS_LOW,
                          epsilon_high=EPS_HIGH, loss_type="dapo", reward_weights=WEIGHTS, bf16=False,
                          use_bias_correction_kl=False, activation_checkpointing=False, report_to="none", use_cpu=True,
                          **config)
    data = datasets.Dataset.from_dict({"prompt": ["p0", "p1"]})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "You are using 'rollout_func'", UserWarning)  # marked experimental
        trainer = trl.GRPOTrainer(path, reward_funcs=[objective(k) for k in range(3)], args=args, train_dataset=data,
                                  processing_class=tok, rollout_func=rollout_func)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch here
    return trainer, trainer._generate_and_score_completions([{"prompt": p} for p in ("p0", "p1") for _ in range(G)])


def our_scores():
    return scalarize.METHODS["linear"](3, weights=WEIGHTS).scalarize(REWARDS)  # (N,) = REWARDS @ WEIGHTS


def test_advantages_match_trl(case, tmp_path):
    """GRPO advantages of the weighted-sum score: mean-only exactly, std-scaled up to the documented epsilon."""
    _, inputs = trl_batch(case, tmp_path / "none", scale_rewards="none")
    s = our_scores()
    torch.testing.assert_close(inputs["advantages"], loss.grpo_advantages(s, G, scale=False), atol=1e-7, rtol=0)
    _, inputs = trl_batch(case, tmp_path / "group", scale_rewards="group")
    ours = loss.grpo_advantages(s, G)
    std = s.view(-1, G).std(1).repeat_interleave(G)  # (N,) unbiased, as both
    assert ours[:G].abs().sum() > 1 and torch.equal(ours[G:], torch.zeros(G))  # a live group and a flat one
    torch.testing.assert_close(inputs["advantages"], ours * (std + 1e-6) / (std + 1e-4), atol=1e-6, rtol=0)


def test_loss_and_gradients_match_trl(case, tmp_path):
    """Off-policy batch (old and reference log-probs perturbed) so the ε-clip and the KL term both act: our loss and
    every parameter gradient equal TRL's."""
    path, _, prompts, completions = case
    trainer, inputs = trl_batch(case, tmp_path)
    N, Pw = len(completions), max(len(p) for p in prompts)
    seq = torch.zeros(N, Pw + C, dtype=torch.long)  # (N, P+C) left-padded prompt, right-padded completion
    attn = torch.zeros(N, Pw + C, dtype=torch.bool)
    for i, c in enumerate(completions):
        p = prompts[i // G]
        seq[i, Pw - len(p):Pw], seq[i, Pw:Pw + len(c)] = torch.tensor(p), torch.tensor(c)
        attn[i, Pw - len(p):Pw + len(c)] = True
    mask = attn[:, Pw:]  # (N, C)
    assert torch.equal(torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1), seq)
    assert torch.equal(inputs["completion_mask"].bool(), mask)

    ours = Transformer.from_pretrained(path)
    batch = rollout.Rollout(sequences=seq, attn_mask=attn, prompt_width=Pw, completion_mask=mask,
                            logprobs=torch.zeros(N, C), completions=completions)
    logp = rollout.completion_logprobs(ours, batch, torch.arange(N), TEMPERATURE)  # (N, C), as train.py
    trl_logp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, seq, attn.long(), C)
    torch.testing.assert_close(logp * mask, trl_logp * mask, atol=1e-5, rtol=0)

    g = torch.Generator().manual_seed(1)
    old = (logp + 0.3 * torch.randn(N, C, generator=g)).detach()
    ref = (logp + 0.3 * torch.randn(N, C, generator=g)).detach()
    adv = loss.grpo_advantages(our_scores(), G)
    inputs.update(old_per_token_logps=old, ref_per_token_logps=ref, advantages=adv)  # TRL's loss on the same batch
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_loss.backward()
    our_loss, metrics, _ = loss.policy_loss(logp, old, adv, mask, ref, EPS_LOW, EPS_HIGH, None, BETA, "k3")
    our_loss.backward()
    assert metrics["clipfrac"] > 0.05 and metrics["kl"] > 1e-3  # the clip and the KL really are exercised
    torch.testing.assert_close(our_loss, trl_loss, atol=1e-6, rtol=1e-5)
    trl_params = dict(trainer.model.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, trl_params[name].grad, atol=1e-6, rtol=1e-4, msg=name)
