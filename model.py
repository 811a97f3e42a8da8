"""A decoder-only transformer covering the Llama / Qwen2 / Qwen3 / SmolLM2 family, loading HF checkpoints directly.

One readable decoder: RMSNorm (in fp32) -> grouped-query attention with rotary embeddings -> RMSNorm -> SwiGLU MLP,
repeated, then a final norm and the LM head. The checkpoint quirks of each family are config fields, not model-name
checks: Qwen2 has a bias on q/k/v, Qwen3 normalizes q and k per head, SmolLM2 ties the LM head to the embedding.
Module names mirror the HF keys, so an HF `model.safetensors` loads with `load_state_dict(strict=True)` and no
mapping table, and `save_pretrained` writes a folder that HF transformers loads back.

References: Llama (arXiv:2302.13971), RoPE (arXiv:2104.09864), GQA (arXiv:2305.13245), RMSNorm (arXiv:1910.07467),
SwiGLU (arXiv:2002.05202), Qwen2 (arXiv:2407.10671), Qwen3 (arXiv:2505.09388); HF transformers'
models/{llama,qwen2,qwen3}/modeling_*.py is the numerical reference (tests/test_model.py checks parity).

    model = Transformer.from_pretrained("path/to/Qwen2.5-1.5B", dtype=torch.bfloat16)
    logits = model(idx)                                   # (B, T, V)
"""
import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


@dataclass
class ModelConfig:
    model_type: str = "llama"  # llama (also SmolLM2), qwen2 or qwen3
    vocab_size: int = 256
    hidden_size: int = 64  # C
    intermediate_size: int = 128  # SwiGLU hidden width
    num_hidden_layers: int = 2
    num_attention_heads: int = 4  # H
    num_key_value_heads: int = 2  # Hkv (GQA: each kv head serves H / Hkv query heads)
    head_dim: int = 0  # D; 0 = hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Llama/Qwen3: bias on q, k, v and o; Qwen2 always has q/k/v bias, never o
    mlp_bias: bool = False
    initializer_range: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(f"unsupported model_type {self.model_type!r}: use one of {sorted(ARCHITECTURES)}")
        self.head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def qkv_bias(self):
        return self.model_type == "qwen2" or self.attention_bias

    @classmethod
    def from_hf(cls, hf: dict) -> "ModelConfig":
        """Build from an HF config.json dict, refusing features this decoder does not implement."""
        mt = hf.get("model_type")
        if mt not in ARCHITECTURES:
            raise ValueError(f"unsupported model_type {mt!r} in config.json: use one of {sorted(ARCHITECTURES)}")
        arch = hf.get("architectures") or [ARCHITECTURES[mt]]
        if arch != [ARCHITECTURES[mt]]:
            raise ValueError(f"unsupported architectures {arch} for model_type {mt!r}: expected {[ARCHITECTURES[mt]]}")
        rope = hf.get("rope_parameters") or {}  # transformers 5 moved rope_theta in here
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if hf.get("rope_scaling") or rope_type != "default" or rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"unsupported RoPE scaling {hf.get('rope_scaling') or rope}: only plain RoPE is supported")
        if hf.get("use_sliding_window"):
            raise ValueError("unsupported use_sliding_window=true: only full attention is implemented")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}: only silu (SwiGLU) is implemented")
        if hf.get("pretraining_tp", 1) not in (1, None):
            raise ValueError("unsupported pretraining_tp > 1")
        names = {f for f in cls.__dataclass_fields__ if f not in ("rope_theta", "head_dim")}
        kw = {k: v for k, v in hf.items() if k in names and v is not None}
        kw["rope_theta"] = float(rope.get("rope_theta", hf.get("rope_theta") or 10000.0))
        kw["head_dim"] = hf.get("head_dim") or 0
        return cls(**kw)

    def to_hf(self) -> dict:
        """The config.json dict HF transformers reads (rope_theta written in both the old and the new place)."""
        d = asdict(self)
        d.update(architectures=[ARCHITECTURES[self.model_type]], hidden_act="silu", rope_scaling=None,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        return d


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # normalize in fp32 (bf16 squares lose too much), multiply by the weight in the input dtype, as HF does;
        # F.rms_norm is one fused kernel where the spelled-out version is five (it matters in the decode loop)
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


def rotate_half(x):
    # split-half RoPE layout (HF): dims [0, D/2) pair with [D/2, D)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions, head_dim, theta, dtype):
    """cos, sin (B, 1, T, D) for integer positions (B, T); computed in fp32 from scratch each call, like HF."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float) / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (B, T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class KVCache:
    """Preallocated keys/values, per layer (B, Hkv, T_max, D); `pos` = how many time steps are filled (same for all
    rows).

    Rows are column-aligned: left padding keeps every row's newest token at column pos - 1, so one write per layer
    serves the whole batch and no torch.cat ever reallocates the cache.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu"):
        # one tensor per layer, not one (L, ...) tensor: a compiled decode step writes a column of each in place,
        # and a write into a view of one big input would make torch.compile copy the whole cache every step
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer, k, v):
        """Write k, v (B, Hkv, T, D) at [pos, pos+T) and return this layer's keys/values (B, Hkv, pos+T, D)."""
        T = k.size(2)
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} + {T} > max_len {self.max_len}; allocate a longer cache")
        self.k[layer][:, :, self.pos:self.pos + T] = k
        self.v[layer][:, :, self.pos:self.pos + T] = v
        return self.k[layer][:, :, :self.pos + T], self.v[layer][:, :, :self.pos + T]

    def repeat_interleave(self, repeats: int):
        """Copy each row `repeats` times in place of the batch (rows b*repeats .. b*repeats+repeats-1 copy row b)."""
        self.k = [k.repeat_interleave(repeats, dim=0) for k in self.k]  # L x (B*G, Hkv, T_max, D)
        self.v = [v.repeat_interleave(repeats, dim=0) for v in self.v]


class ColumnWrite:
    """KVCache access for the fixed-shape decode step: update() writes one token per row at `column`, a (1,) long
    tensor rather than a Python int, and returns the WHOLE preallocated cache (the attention mask hides the columns
    not written yet). No shape depends on the step, so a compiled step (or a CUDA graph) serves every step."""

    def __init__(self, cache, column):
        self.k, self.v, self.column = cache.k, cache.v, column

    def update(self, layer, k, v):  # k, v (B, Hkv, 1, D)
        self.k[layer].index_copy_(2, self.column, k)
        self.v[layer].index_copy_(2, self.column, v)
        return self.k[layer], self.v[layer]  # (B, Hkv, T_max, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx):
        super().__init__()
        self.layer_idx, self.H, self.Hkv = layer_idx, cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.H * self.D, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.Hkv * self.D, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.Hkv * self.D, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.H * self.D, cfg.hidden_size, bias=cfg.attention_bias and cfg.model_type != "qwen2")
        if cfg.model_type == "qwen3":  # Qwen3 normalizes each head's q and k before RoPE
            self.q_norm = RMSNorm(self.D, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.D, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, kv_cache):
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.H, self.D)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D).transpose(1, 2)  # (B, Hkv, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, D), (B, Hkv, T, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, Hkv, S, D), S = cached + T
        # is_causal only for a plain full-sequence forward; any cache or padding comes as an explicit mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and kv_cache is None,
                                           enable_gqa=self.H != self.Hkv)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.H * self.D))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, kv_cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The HF `model.` prefix: embedding, blocks, final norm."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False  # recompute each block's activations in backward (training only)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight  # one Parameter; state_dict lists it under both keys

    def _init_weights(self, m):
        # HF's init (normal, std = initializer_range), so from-scratch models train like HF ones
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, positions=None, attn_mask=None, kv_cache=None, head=None):
        """idx (B, T) -> logits (B, T, V), or what `head` makes of the final normed hidden states.

        positions (B, T) long: RoPE positions; default = count of real tokens before each one (so left padding works).
        attn_mask (B, S) bool, True = real token, S = tokens in the cache after this call (= T without a cache).
        kv_cache: a KVCache; this call appends its T tokens at kv_cache.pos and advances it.
        head: optional fn(hidden (B, T, C), lm_head weight (V, C)) whose result is returned instead of the logits;
        training computes chunked log-probs this way, inside the forward, where FSDP has the head weight gathered.
        """
        B, T = idx.size()
        start = kv_cache.pos if kv_cache is not None else 0
        S = start + T
        if attn_mask is not None and attn_mask.shape != (B, S):
            raise ValueError(f"attn_mask must be (B, cached + T) = {(B, S)}, got {tuple(attn_mask.shape)}")
        if positions is None:
            if attn_mask is None:
                positions = torch.arange(start, S, device=idx.device).expand(B, T)  # (B, T)
            else:
                positions = (attn_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:]  # (B, T)
        mask = None
        if attn_mask is not None or (kv_cache is not None and T > 1):
            # query i (absolute start + i) sees key j when j <= start + i and key j is real; a query always sees
            # itself so a fully padded row never softmaxes over nothing (its output is ignored anyway)
            q_pos = torch.arange(start, S, device=idx.device)[:, None]  # (T, 1)
            k_pos = torch.arange(S, device=idx.device)[None, :]  # (1, S)
            mask = (k_pos <= q_pos)[None]  # (1, T, S)
            if attn_mask is not None:
                mask = (mask & attn_mask[:, None, :]) | (k_pos == q_pos)  # (B, T, S)
            mask = mask[:, None]  # (B or 1, 1, T, S)
        x = self.model.embed_tokens(idx)  # (B, T, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        for block in self.model.layers:
            if self.gradient_checkpointing and self.training and kv_cache is None:
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.pos = S
        x = self.model.norm(x)
        if head is not None:
            return head(x, self.lm_head.weight)
        return self.lm_head(x)  # (B, T, V)

    def decode_step(self, idx, positions, attn_mask, kv_cache, column):
        """One decode step on fixed shapes, the one rollout.py compiles: idx, positions (B, 1) long; the new keys and
        values go to cache column `column` ((1,) long tensor); attention reads the whole cache under attn_mask
        (B, T_max) bool, which the caller keeps True only for real tokens up to and including this column.
        Returns the logits (B, V). The forward above with a KVCache is the eager reference it is tested against."""
        x = self.model.embed_tokens(idx)  # (B, 1, C)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        mask, cache = attn_mask[:, None, None, :], ColumnWrite(kv_cache, column)  # (B, 1, 1, T_max)
        for block in self.model.layers:
            x = block(x, cos, sin, mask, cache)
        return self.lm_head(self.model.norm(x[:, -1]))  # (B, V)

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype | None = None) -> "Transformer":
        """Load an HF folder: config.json + model.safetensors (or sharded via model.safetensors.index.json).

        dtype None keeps fp32 (the CPU training default); pass torch.bfloat16 for large models on GPU.
        """
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint folder {path!r} does not exist: pass an HF model folder")
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{cfg_path} is missing: an HF checkpoint folder needs its config.json")
        with open(cfg_path) as f:
            try:
                config = ModelConfig.from_hf(json.load(f))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise ValueError(f"{cfg_path} is not an HF model config ({type(e).__name__}: {e})") from None
        single, index = os.path.join(path, "model.safetensors"), os.path.join(path, "model.safetensors.index.json")
        if os.path.isfile(single):
            files = [single]
        elif os.path.isfile(index):
            with open(index) as f:
                files = [os.path.join(path, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
            absent = [p for p in files if not os.path.isfile(p)]
            if absent:
                raise FileNotFoundError(f"shards listed in {index} are missing: {absent}")
        else:
            raise FileNotFoundError(f"no weights in {path!r}: need model.safetensors or model.safetensors.index.json "
                                    "(for a .bin checkpoint: load it in transformers, then save_pretrained)")
        sd = {}
        for p in files:
            try:
                sd.update(load_file(p))
            except SafetensorError as e:  # truncated by an interrupted copy or download, or not safetensors at all
                raise ValueError(f"{p} cannot be read ({e}): the file is truncated or not safetensors; copy it again")
        dtype = dtype or torch.float32
        sd = {k: v.to(dtype) for k, v in sd.items()}
        if config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)  # tied: the head is the embedding
        with torch.device("meta"):  # no memory or random init for weights about to be overwritten
            model = cls(config)
        expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
        missing, unexpected = sorted(expected - sd.keys()), sorted(sd.keys() - expected)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path!r} does not match its config.json: missing keys {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                             f"{' ...' if len(unexpected) > 8 else ''} (incomplete or a different model?)")
        if config.tie_word_embeddings:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        model.load_state_dict(sd, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight  # assign=True replaced the shared Parameter
        return model

    def save_pretrained(self, path: str):
        """Write config.json + model.safetensors that both from_pretrained and HF transformers load."""
        os.makedirs(path, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            del sd["lm_head.weight"]  # HF stores a tied head once, under the embedding
        with open(os.path.join(path, "config.json"), "w") as f:
            cfg = self.config.to_hf()
            cfg["dtype"] = str(next(iter(sd.values())).dtype).removeprefix("torch.")
            json.dump(cfg, f, indent=2)
        save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})

    def num_params(self):
        return sum(p.numel() for p in self.parameters())
