"""Batched KV-cached sampling for RL rollouts: many ragged prompts at once, G samples per prompt, one prefill.

    from rollout import generate
    ro = generate(model, prompts, max_new_tokens=128, temperature=1.0, group_size=8, eos_ids=(eos,),
                  generator=torch.Generator().manual_seed(0))
    ro.sequences        # (N, Pw + C) left-padded prompts then completions, N = P * G rows, prompt-major
    ro.completions      # N token lists, each cut after its first EOS (EOS kept)
    logp = completion_logprobs(model, ro, rows, temperature)   # teacher-forced (n, C), for the policy loss

How it works: the P distinct prompts are left-padded to one width and prefilled once into a preallocated KVCache
(model.py); the cache rows are then copied G times (repeat_interleave), so the G samples of a prompt share that one
prefill. Every decode step feeds one token per row at the same cache column; each row carries its own RoPE position
and the attention mask hides its padding. A row that emits an EOS is done: later tokens are padding (masked out),
and the loop stops early once every row is done.

Log-probs. `logprobs` holds log pi(token) under the temperature-scaled distribution softmax(logits / T) WITHOUT
top-k/top-p truncation: that is what a teacher-forced forward computes as log_softmax(logits / T), so the PPO ratio
starts at 1 (we deliberately do not return the truncated sampler's log-probs; the policy being trained is
the untruncated one). With temperature=0 (greedy) they are log-probs of the temperature-1 distribution.

Sampling draws one uniform per row from the explicit torch.Generator and inverts the cumulative distribution
(top-k/top-p zero the excluded probabilities first, so they can never be drawn).
References: nucleus (top-p) sampling, arXiv:1904.09751; the prefill-then-copy pattern of nanochat's engine.py.
"""
from dataclasses import dataclass

import torch

from kernels.logprobs import token_logprobs
from model import KVCache, Transformer


@dataclass
class Rollout:
    sequences: torch.Tensor  # (N, Pw + C) long: left-padded prompt, then completion (pad_id after EOS)
    attn_mask: torch.Tensor  # (N, Pw + C) bool: real prompt tokens and completion tokens up to and including EOS
    prompt_width: int  # Pw, the padded prompt width; completions start at column Pw
    completion_mask: torch.Tensor  # (N, C) bool: True up to and including the first EOS
    logprobs: torch.Tensor  # (N, C) float32: sampling log-probs of the chosen tokens (0 where masked)
    completions: list  # N lists of token ids, cut after the first EOS (EOS kept)


def _check(model, prompts, max_new_tokens, temperature, top_p, top_k, group_size, generator):
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts is empty: pass a non-empty list of token-id lists")
    if any(len(p) == 0 for p in prompts):
        raise ValueError(f"prompt {[len(p) for p in prompts].index(0)} is empty: every prompt needs at least one token")
    if group_size < 1:
        raise ValueError(f"group_size (G) must be >= 1, got {group_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    longest, limit = max(len(p) for p in prompts), model.config.max_position_embeddings
    if longest + max_new_tokens > limit:
        raise ValueError(f"longest prompt ({longest}) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                         f"max_position_embeddings ({limit}): shorten the prompt or lower max_new_tokens")
    V = model.config.vocab_size
    if any(not 0 <= t < V for p in prompts for t in p):
        raise ValueError(f"prompt token ids must lie in [0, vocab_size={V})")
    if isinstance(generator, (list, tuple)) and len(generator) != len(prompts):
        raise ValueError(f"got {len(generator)} generators for {len(prompts)} prompts: pass one per prompt, or one")


def _filter(probs, top_k, top_p):
    """Unnormalized probabilities (N, V) with everything outside the top-k, then the top-p (nucleus) set, zeroed."""
    V = probs.size(-1)
    if not 0 < top_k < V and top_p >= 1.0:
        return probs
    # sort only the k survivors when top-k is on; ties at the k-th value keep exactly k tokens
    vals, order = torch.topk(probs, top_k, dim=-1) if 0 < top_k < V else torch.sort(probs, dim=-1, descending=True)
    if top_p < 1.0:
        mass = vals.cumsum(-1)  # (N, k)
        # drop a token when the mass strictly before it already reaches top_p: keeps the smallest set with mass >= top_p
        vals = vals.masked_fill((mass - vals) >= top_p * mass[:, -1:], 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, vals)  # (N, V)


def _sample(logits, temperature, top_k, top_p, u):
    """logits (N, V), uniforms u (N, 1) -> next tokens (N,) and their log-probs (N,) under softmax(logits / T)."""
    x = logits.float()
    if temperature not in (0, 1):
        x = x / temperature  # greedy (T = 0) keeps the temperature-1 log-probs
    top = x.amax(-1, keepdim=True)  # (N, 1)
    probs = (x - top).exp_()  # (N, V) unnormalized
    log_norm = top.squeeze(-1) + probs.sum(-1).log()  # (N,) logsumexp of the untruncated distribution
    if temperature == 0:
        tok = x.argmax(-1)  # (N,)
    else:
        # inverse-CDF sampling: one uniform per row against the cumulative mass. Exactly what torch.multinomial
        # does, but ~5x faster on CPU here, and far cheaper than Gumbel-max's V random draws per row.
        cdf = _filter(probs, top_k, top_p).cumsum_(-1)  # (N, V) non-decreasing; flat over excluded tokens
        u = (1.0 - u) * cdf[:, -1:]  # (N, 1) in (0, mass]
        tok = torch.searchsorted(cdf, u).squeeze(-1)  # (N,) first token whose cdf reaches u: never a zero-mass one
    return tok, x.gather(-1, tok[:, None]).squeeze(-1) - log_norm


def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
             top_k: int = 0, eos_ids=(), group_size: int = 1, generator: torch.Generator | list | None = None,
             pad_id: int = 0, compile: bool = False) -> Rollout:
    """Sample `group_size` completions for each prompt (rows prompt-major: row = prompt_index * G + g).

    temperature=0 is greedy; top_k=0 and top_p=1 disable truncation. The loop stops when every row has emitted one
    of `eos_ids` or after max_new_tokens, so C <= max_new_tokens. `generator` must live on the model's device; a list
    of one generator per prompt makes each prompt's samples independent of the rest of the batch (train.py uses this
    so that a run samples the same completions on any number of ranks).
    compile=True runs each decode step as one torch.compile'd fixed-shape graph (Transformer.decode_step), CUDA graphs
    on a GPU; the first call of a new shape compiles it (seconds to a minute). Greedy output equals the eager path's.
    """
    _check(model, prompts, max_new_tokens, temperature, top_p, top_k, group_size, generator)
    # inference mode is the fastest no-grad mode, but FSDP2 would keep all-gather buffers made in it and fail later
    with torch.no_grad() if hasattr(model, "unshard") else torch.inference_mode():
        prompt_tok, prompt_mask, tokens, logprobs, alive = _decode(model, prompts, max_new_tokens, temperature, top_p,
                                                                   top_k, eos_ids, group_size, generator, pad_id,
                                                                   compile)
    # leaving inference mode: clone/cat give ordinary tensors, which training may feed to autograd
    G = group_size
    lengths = alive.sum(-1).tolist()
    completions = [row[:n] for row, n in zip(tokens.tolist(), lengths)]
    return Rollout(sequences=torch.cat([prompt_tok.repeat_interleave(G, dim=0), tokens], dim=1),  # (N, Pw + C)
                   attn_mask=torch.cat([prompt_mask.repeat_interleave(G, dim=0), alive], dim=1),
                   prompt_width=prompt_tok.size(1), completion_mask=alive.clone(), logprobs=logprobs.clone(),
                   completions=completions)


def _compiled_step(device):
    """Transformer.decode_step compiled once per process: CUDA graphs on a GPU (its launches dominate a decode
    step), inductor's fused CPU kernels otherwise. dynamo re-specializes per model and cache shape."""
    if device.type not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[device.type] = torch.compile(Transformer.decode_step, mode=mode)
    return _COMPILED[device.type]


_COMPILED = {}
CACHE_BUCKET = 64  # compiled decode: the cache length is rounded up to this, so a new prompt width rarely recompiles


def _decode(model, prompts, max_new_tokens, temperature, top_p, top_k, eos_ids, G, generator, pad_id, compile):
    """Prefill + decode loop; returns prompt tokens/mask (P, Pw) and tokens, logprobs, completion mask (N, C)."""
    weight = model.lm_head.weight
    device = weight.device
    # the cache holds what attention computes in: bf16 under autocast (fp32 master weights would double its size)
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else weight.dtype
    P, Pw = len(prompts), max(len(p) for p in prompts)
    N = P * G

    # --- left-pad the P distinct prompts and prefill them once ---
    prompt_tok = torch.full((P, Pw), pad_id, dtype=torch.long)  # (P, Pw)
    prompt_mask = torch.zeros(P, Pw, dtype=torch.bool)  # (P, Pw)
    for i, p in enumerate(prompts):
        prompt_tok[i, Pw - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[i, Pw - len(p):] = True
    prompt_tok, prompt_mask = prompt_tok.to(device), prompt_mask.to(device)
    T_max = Pw + max_new_tokens
    if compile:
        T_max = -(-T_max // CACHE_BUCKET) * CACHE_BUCKET
    cache = KVCache(model.config, P, T_max, dtype=dtype, device=device)
    # only the last position's logits are needed; `head` applies lm_head inside the forward (FSDP-safe)
    logits = model(prompt_tok, attn_mask=prompt_mask, kv_cache=cache,
                   head=lambda h, w: h[:, -1] @ w.T)  # (P, V) from h (P, Pw, C), w (V, C)

    # --- copy each prompt's cache and logits to its G rows ---
    cache.repeat_interleave(G)
    logits = logits.repeat_interleave(G, dim=0)  # (N, V)
    # True = a real token the next query may see: the prompts now, each completion column as it is written
    attn_mask = torch.zeros(N, T_max, dtype=torch.bool, device=device)  # (N, T_max)
    attn_mask[:, :Pw] = prompt_mask.repeat_interleave(G, dim=0)
    step = None
    if compile:
        step = _compiled_step(device)
        if device.type == "cuda":  # a CUDA graph replays fixed addresses: the cache is an input it writes in place
            for t in cache.k + cache.v:
                torch._dynamo.mark_static_address(t)
    pos = prompt_mask.sum(-1).repeat_interleave(G)[:, None]  # (N, 1) RoPE position of the next token
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)  # (N, C_max)
    logprobs = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=device)
    alive = torch.ones(N, max_new_tokens, dtype=torch.bool, device=device)  # completion mask being built
    done = torch.zeros(N, dtype=torch.bool, device=device)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    # every uniform the loop may use, drawn up front: one call per prompt generator per rollout, not per step
    uniforms = None  # greedy draws nothing
    if temperature > 0 and isinstance(generator, (list, tuple)):
        uniforms = torch.cat([torch.rand(G, max_new_tokens, generator=g, device=device) for g in generator])
    elif temperature > 0:
        uniforms = torch.rand(N, max_new_tokens, generator=generator, device=device)  # (N, C_max)

    # --- decode: one token per row per step, all rows at the same cache column ---
    C = max_new_tokens
    for t in range(max_new_tokens):
        tok, lp = _sample(logits, temperature, top_k, top_p, None if uniforms is None else uniforms[:, t:t + 1])
        alive[:, t] = ~done
        tokens[:, t] = tok.masked_fill_(done, pad_id)
        logprobs[:, t] = lp.masked_fill_(done, 0.0)
        if len(eos):
            done |= torch.isin(tok, eos)
            if bool(done.all()):  # every row has finished: stop early
                C = t + 1
                break
        if t + 1 == max_new_tokens:
            break
        attn_mask[:, Pw + t] = True  # the token fed now (a finished row's output is never used)
        if step is None:
            logits = model(tokens[:, t:t + 1], positions=pos + t, attn_mask=attn_mask[:, :Pw + t + 1],
                           kv_cache=cache)[:, -1]  # (N, V)
        else:  # the same step on fixed shapes: the whole cache, the column as a tensor
            column = torch.full((1,), Pw + t, dtype=torch.long, device=device)
            logits = step(model, tokens[:, t:t + 1], pos + t, attn_mask, cache, column)  # (N, V)

    return prompt_tok, prompt_mask, tokens[:, :C], logprobs[:, :C], alive[:, :C]


def completion_logprobs(model, ro: Rollout, rows: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False,
                        remove_padding: bool = False):
    """Teacher-forced log-probs (n, C) of the sampled completion tokens of `rows` of a rollout (and their entropies
    (n, C) with_entropy), under softmax(logits / temperature): what training differentiates. Position Pw-1+j predicts
    completion token j. The log-probs are computed inside the model's forward by `head`, from the hidden states and
    the LM-head weight in chunks (kernels/logprobs.py), so the (n, T, V) logits never exist and FSDP's all-gathered
    head weight is in scope. bf16 autocast on a GPU (the fp32 master weights stay as they are).

    remove_padding: a row is [left padding, prompt, completion, right padding]; shift each row left past its own
    prompt padding and cut the forward to the longest real row, so it pays for max_i(prompt_i + completion_i) columns
    instead of Pw + C. Completion token j of row i is then predicted at column prompt_i - 1 + j. The same values up
    to float summation order; rows of similar length in one call (actor.py sorts them) cut the most."""
    seq, attn, Pw = ro.sequences[rows], ro.attn_mask[rows], ro.prompt_width  # (n, Pw + C)
    targets = seq[:, Pw:]  # (n, C) completion tokens (pad after EOS: masked by the caller)
    if remove_padding:
        seq, attn, predicting = _shift_left(seq, attn, Pw)

    def head(hidden, weight):  # hidden (n, T - 1, hidden size), weight (V, hidden size)
        if remove_padding:  # (n, C, hidden size): the column that predicts each completion token
            hidden = hidden.gather(1, predicting[:, :, None].expand(-1, -1, hidden.size(-1)))
        else:
            hidden = hidden[:, Pw - 1:]
        return token_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=with_entropy)

    with torch.autocast(seq.device.type, dtype=torch.bfloat16, enabled=seq.device.type == "cuda"):
        return model(seq[:, :-1], attn_mask=attn[:, :-1], head=head)


def _shift_left(seq, attn, Pw):
    """Rows (n, Pw + C) moved left past their prompt padding and cut to the longest real row (n, T), and the column
    (n, C) of the input whose output predicts completion token j (past a row's end, any valid column)."""
    n, W = seq.shape
    left_pad = Pw - attn[:, :Pw].sum(1)  # (n,) prompts are left-padded
    cols = torch.arange(W, device=seq.device)
    source = (cols + left_pad[:, None]).clamp(max=W - 1)  # (n, W): packed column c comes from column c + pad
    seq, attn = seq.gather(1, source), attn.gather(1, source) & (cols < W - left_pad[:, None])
    T = max(int(attn.sum(1).max()), 2)  # the longest real row (a forward needs one input and one target)
    predicting = (Pw - left_pad[:, None] - 1 + torch.arange(W - Pw, device=seq.device)).clamp(max=T - 2)  # (n, C)
    return seq[:, :T], attn[:, :T], predicting


@torch.no_grad()
def rollout_logprobs(model, ro: Rollout, micro_batch: int, temperature: float = 1.0,
                     remove_padding: bool = False) -> torch.Tensor:
    """No-grad teacher-forced log-probs (N, C) of every row of a rollout, `micro_batch` rows per forward;
    remove_padding takes the rows shortest first (see completion_logprobs) and puts them back in order."""
    N = ro.sequences.size(0)
    order = ro.attn_mask.sum(1).argsort(stable=True) if remove_padding else torch.arange(N)  # (N,) row indices
    logp = torch.cat([completion_logprobs(model, ro, order[i:i + micro_batch], temperature,
                                          remove_padding=remove_padding) for i in range(0, N, micro_batch)])
    return logp[order.argsort()] if remove_padding else logp  # back in rollout order
