"""rollout.generate: HF-identical greedy decoding, exact sampling log-probs, seeding, top-k/top-p, EOS, bad input.

    python -m pytest -q tests/test_rollout.py
"""
import pytest
import torch

from model import ModelConfig, Transformer
from rollout import completion_logprobs, generate, rollout_logprobs

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8], [9], [10, 11, 12, 13]]  # ragged: widths 3, 8, 1, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    """A tiny random HF Qwen2 (sharp logits, so greedy has no near-ties) and the same weights in our Transformer."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)
    hf = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("qwen2")
    hf.save_pretrained(path)
    return hf, Transformer.from_pretrained(str(path)).eval()


def left_pad(prompts):
    Pw = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), Pw, dtype=torch.long)
    mask = torch.zeros(len(prompts), Pw, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, Pw - len(p):], mask[i, Pw - len(p):] = torch.tensor(p), 1
    return ids, mask


def test_greedy_matches_hf_generate(hf_and_ours):
    """Greedy decoding of a ragged batch is token-for-token HF generate's, rows stopping at their own EOS."""
    hf, ours = hf_and_ours
    free = generate(ours, PROMPTS, 12, temperature=0)
    eos = free.completions[1][4]  # a token row 1 emits mid-way, so some rows stop early
    ro = generate(ours, PROMPTS, 12, temperature=0, eos_ids=(eos,), pad_id=0)
    ids, mask = left_pad(PROMPTS)
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos,
                      pad_token_id=0)
    assert torch.equal(ro.sequences, out)
    lengths = [len(c) for c in ro.completions]
    assert lengths[1] <= 5 and max(lengths) > min(lengths)
    assert all(c[-1] == eos for c, n in zip(ro.completions, lengths) if n < ro.completion_mask.size(1))
    assert ro.completion_mask.sum(-1).tolist() == lengths
    assert (ro.sequences[:, ro.prompt_width:][~ro.completion_mask] == 0).all()  # pad after EOS


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 0, 1.0), (0.7, 10, 0.9), (0, 0, 1.0)])
def test_logprobs_equal_teacher_forced(hf_and_ours, temperature, top_k, top_p):
    """Sampling log-probs equal log_softmax(logits / T) of a teacher-forced forward over the returned rows."""
    _, ours = hf_and_ours
    eos = generate(ours, PROMPTS, 6, temperature=0).completions[0][3]
    ro = generate(ours, PROMPTS, 10, temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=(eos,), group_size=3,
                  generator=torch.Generator().manual_seed(0))
    P = ro.prompt_width
    assert ro.sequences.shape == (12, P + ro.completion_mask.size(1)) and len(ro.completions) == 12
    assert not any(x.is_inference() for x in (ro.sequences, ro.attn_mask, ro.completion_mask, ro.logprobs))
    logits = ours(ro.sequences, attn_mask=ro.attn_mask)[:, P - 1:-1].detach()  # (N, C, V) with autograd on
    logp = (logits / (temperature or 1.0)).log_softmax(-1).gather(-1, ro.sequences[:, P:, None]).squeeze(-1)
    assert (logp * ro.completion_mask - ro.logprobs).abs().max() <= 1e-4
    # rows are prompt-major and each group of G shares its prompt
    assert torch.equal(ro.sequences[:, :P], left_pad(PROMPTS)[0].repeat_interleave(3, dim=0))


def test_packed_logprobs_equal_each_row_alone(hf_and_ours):
    """--remove-padding: training's log-probs shift each row past its prompt padding and cut the forward to the
    longest real row; they equal HF's forward of each row alone (no padding at all), and rollout_logprobs, which then
    takes the rows shortest first in micro-batches, returns the same values in rollout order."""
    hf, ours = hf_and_ours
    eos = generate(ours, PROMPTS, 6, temperature=0).completions[0][3]
    ro = generate(ours, PROMPTS, 10, temperature=1.0, eos_ids=(eos,), group_size=2,
                  generator=torch.Generator().manual_seed(1))
    N, P, mask = ro.sequences.size(0), ro.prompt_width, ro.completion_mask
    lengths = ro.attn_mask.sum(1)  # (N,) real tokens of each row
    assert len(set(lengths.tolist())) > 2  # ragged rows
    reference = torch.zeros(N, mask.size(1))
    for i in range(N):
        tokens, plen = ro.sequences[i][ro.attn_mask[i]], int(ro.attn_mask[i, :P].sum())
        with torch.no_grad():
            logits = hf(tokens[None]).logits[0]  # (length, V)
        reference[i, :len(tokens) - plen] = logits[plen - 1:-1].log_softmax(-1).gather(-1, tokens[plen:, None])[:, 0]
    widths = []
    hook = ours.register_forward_pre_hook(lambda module, args: widths.append(args[0].size(1)))
    try:
        logp = completion_logprobs(ours, ro, torch.arange(N), remove_padding=True).detach()
        assert widths == [int(lengths.max()) - 1]
        assert ((logp - reference) * mask).abs().max() <= 1e-5
        widths.clear()
        logp = rollout_logprobs(ours, ro, micro_batch=3, remove_padding=True)
        assert ((logp - reference) * mask).abs().max() <= 1e-5
        shortest_first = lengths.sort().values
        assert widths == [int(shortest_first[i:i + 3].max()) - 1 for i in range(0, N, 3)]
        assert min(widths) < ro.sequences.size(1) - 1  # some forward is narrower than the padded batch
    finally:
        hook.remove()


def test_seeding():
    """Same seed, same samples; another seed, other samples; per-prompt generators are batch-independent."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)).eval()

    def run(seed):
        return generate(model, PROMPTS, 8, group_size=2, generator=torch.Generator().manual_seed(seed)).sequences

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    # one generator per prompt: a prompt's samples do not depend on which other prompts share the batch
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]
    batch = generate(model, PROMPTS, 8, group_size=2, generator=gens).completions
    alone = generate(model, PROMPTS[2:3], 8, group_size=2, generator=[torch.Generator().manual_seed(102)]).completions
    assert batch[4:6] == alone and batch[0:2] != batch[4:6]


def constant_logits_model(logits):
    """A Transformer whose next-token logits are `logits` (V,) whatever the input, so the allowed set is known."""
    V, C = logits.numel(), 16
    model = Transformer(ModelConfig(vocab_size=V, hidden_size=C, num_attention_heads=2, num_key_value_heads=1)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()  # blocks add nothing, so the hidden state is the normed embedding
        model.model.embed_tokens.weight.fill_(1.0)  # every token embeds to ones, normed to ones
        model.lm_head.weight.copy_((logits / C)[:, None].expand(V, C))  # logit_v = sum_c W[v, c] * 1
    return model


@pytest.mark.parametrize("top_k, top_p, allowed", [(5, 1.0, {0, 1, 2, 3, 4}), (0, 0.7, {0, 1, 2}),
                                                   (4, 0.5, {0, 1}), (1, 1.0, {0})])
def test_top_k_top_p_never_emit_excluded(top_k, top_p, allowed):
    """Over 6000 draws only the top-k / nucleus tokens appear, each of them does, and log-probs stay untruncated."""
    probs = torch.tensor([0.30, 0.25, 0.20, 0.10, 0.05] + [0.10 / 35] * 35)  # V = 40; nucleus(0.7) = {0, 1, 2}
    model = constant_logits_model(probs.log())
    ro = generate(model, [[1, 2]] * 3, 20, top_k=top_k, top_p=top_p, group_size=100,
                  generator=torch.Generator().manual_seed(0))
    emitted = ro.sequences[:, ro.prompt_width:]
    assert set(emitted.unique().tolist()) == allowed
    assert torch.allclose(ro.logprobs, probs.log()[emitted], atol=1e-5)  # untruncated distribution
    if top_k == 0:  # the frequencies follow the renormalized nucleus
        freq = torch.bincount(emitted.flatten(), minlength=40)[:3].float() / emitted.numel()
        assert torch.allclose(freq, probs[:3] / probs[:3].sum(), atol=0.03)


def test_early_stop_when_all_rows_end():
    """When every row emits EOS, the loop stops early and C is the longest completion."""
    probs = torch.tensor([0.9, 0.1] + [0.0] * 6)  # token 0 is EOS, drawn almost at once
    model = constant_logits_model((probs + 1e-9).log())
    ro = generate(model, [[1]], 50, eos_ids=(0,), group_size=16, generator=torch.Generator().manual_seed(0))
    assert ro.completion_mask.size(1) == max(len(c) for c in ro.completions) < 50
    assert all(c[-1] == 0 and 0 not in c[:-1] for c in ro.completions)


def test_bad_input_errors():
    """Empty prompt list, empty prompt, G < 1 and a prompt plus max_new_tokens beyond the context are refused."""
    model = Transformer(ModelConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=16))
    for kwargs, msg in [(dict(prompts=[]), "prompts is empty"), (dict(prompts=[[1], []]), "prompt 1 is empty"),
                        (dict(group_size=0), "group_size"), (dict(max_new_tokens=14), "max_position_embeddings"),
                        (dict(prompts=[[40]]), "vocab_size"), (dict(top_p=0.0), "top_p"),
                        (dict(generator=[torch.Generator()] * 2), "2 generators for 1 prompts")]:
        args = {**dict(prompts=[[1, 2, 3]], max_new_tokens=4, group_size=1, top_p=1.0), **kwargs}
        with pytest.raises(ValueError, match=msg):
            generate(model, args.pop("prompts"), args.pop("max_new_tokens"), **args)


def test_no_autograd_graph_under_fsdp_style_models():
    """Models with FSDP2's `unshard` run generation under no_grad (not inference mode), still without a graph."""
    model = Transformer(ModelConfig(vocab_size=32, hidden_size=16, num_attention_heads=2, num_key_value_heads=1))
    model.unshard = lambda: None  # what FSDP2's fully_shard adds; generate must not record autograd history
    ro = generate(model, [[1, 2, 3]], 4, generator=torch.Generator().manual_seed(0))
    assert not ro.logprobs.requires_grad and not ro.logprobs.is_inference()


def test_compiled_decode_equals_eager(hf_and_ours):
    """--compile: the torch.compile'd fixed-shape decode step gives eager's greedy completions token for token (rows
    stopping at their own EOS), and its sampling log-probs equal teacher forcing within fp32 tolerance. The cache
    length is rounded up to rollout.CACHE_BUCKET, so one compile serves both calls (about 30 s on 2 CPU cores)."""
    _, ours = hf_and_ours
    eos = generate(ours, PROMPTS, 12, temperature=0).completions[1][4]
    eager = generate(ours, PROMPTS, 12, temperature=0, eos_ids=(eos,))
    compiled = generate(ours, PROMPTS, 12, temperature=0, eos_ids=(eos,), compile=True)
    assert torch.equal(compiled.sequences, eager.sequences) and compiled.completions == eager.completions
    assert (compiled.logprobs - eager.logprobs).abs().max() <= 1e-5
    ro = generate(ours, PROMPTS, 12, temperature=1.0, eos_ids=(eos,), group_size=3, compile=True,
                  generator=torch.Generator().manual_seed(0))
    P = ro.prompt_width
    logits = ours(ro.sequences, attn_mask=ro.attn_mask)[:, P - 1:-1].detach()  # (N, C, V)
    logp = logits.log_softmax(-1).gather(-1, ro.sequences[:, P:, None]).squeeze(-1)
    assert (logp * ro.completion_mask - ro.logprobs).abs().max() <= 1e-4
