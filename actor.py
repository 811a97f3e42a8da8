"""The policy update ("the actor", in verl's words): AdamW steps of the clipped policy loss over the mini-batches and
micro-batches of a rollout, and the per-objective gradients and Gram matrix that gradient-level methods combine.

    actor = Actor(model, optimizer, method, ...)            # once; model may be DDP- or FSDP2-wrapped
    followed, stats = actor.update(batch, adv, objective_adv, old_logp, ref_logp)
    w, unclipped = actor.clipped_weights(batch, followed, old_logp, ref_logp)    # CTWA's completion weight

The loss is a token-mean over the GLOBAL mini-batch: each micro-batch's token-mean is scaled by its share of the
mini-batch's valid tokens on all ranks (times the world size, since DDP averages gradients over ranks), so the update
does not depend on the number of ranks or the micro-batch size. A gradient-level method (scalarize.py) gets the Gram
matrix of the K per-objective gradients (under FSDP each rank adds its shard's partial Gram, and one all-reduce makes
it exact) and returns coefficients c; the update direction is sum_k c_k g_k, written into the .grad of every
parameter. The policy loss is linear in the advantage (on policy), so that update follows the advantage
sum_k c_k A_k: `followed` records, for every row, the advantage its update followed, for the covariance statistic.
A non-finite loss or gradient norm skips the optimizer step (counted in stats["skipped"]).
"""
import math
import re

import torch
import torch.distributed as dist

import ctwa
import loss
import rollout


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def all_sum(t):
    """Sum a tensor over the ranks, in place (nothing to do in one process)."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def gather(t):
    """Concatenate a tensor (n, ...) from every rank along dim 0, in rank order (identical on all ranks)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def chunks(n, size):
    """Row indices 0..n-1 in consecutive chunks of `size`."""
    return [torch.arange(i, min(i + size, n)) for i in range(0, n, size)]


def micro_batches(batch, rows, size, by_length):
    """`rows` (a 1-D index tensor) in micro-batches of `size`; by_length: shortest real rows first, so rows of
    similar length share a forward, which rollout.completion_logprobs(remove_padding=True) cuts to its longest row."""
    if by_length:
        rows = rows[batch.attn_mask[rows].sum(1).argsort(stable=True).to(rows.device)]
    return [rows[r] for r in chunks(len(rows), size)]


def local(t):
    """The local shard of an FSDP2 DTensor (the tensor itself without FSDP)."""
    return t.to_local() if hasattr(t, "to_local") else t


def layer_parameters(model, layers):
    """The parameters of the decoder layers with these indices (names "...layers.<i>....", any wrapping)."""
    wanted = {int(i) for i in layers}
    found = [(int(m[1]), p) for name, p in model.named_parameters() if (m := re.search(r"layers\.(\d+)\.", name))]
    missing = wanted - {i for i, _ in found}
    if missing:
        raise ValueError(f"target layers {sorted(missing)} do not exist: the model's layers are "
                         f"0..{max(i for i, _ in found)}")
    return [p for i, p in found if i in wanted]


class Actor:
    """The trained model (wrapped or not), its optimizer and the loss settings; eps_* / clip_c None = that clip off."""

    def __init__(self, model, optimizer, method, *, temperature, eps_low, eps_high, clip_c, kl_coef, kl_type,
                 entropy_coef, micro_batch, mini_batches, ppo_epochs, grad_clip, fsdp, remove_padding=False):
        self.model, self.optimizer, self.method = model, optimizer, method
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        # the Gram a method observes before the update may cover some layers only (dynamic weighting's target layers)
        self.gram_params = self.params if method.target_layers is None else \
            layer_parameters(model, method.target_layers)
        self.temperature, self.eps_low, self.eps_high, self.clip_c = temperature, eps_low, eps_high, clip_c
        self.kl_coef, self.kl_type, self.entropy_coef = kl_coef, kl_type, entropy_coef
        self.micro_batch, self.mini_batches, self.ppo_epochs = micro_batch, mini_batches, ppo_epochs
        self.grad_clip, self.fsdp = grad_clip if grad_clip > 0 else math.inf, fsdp
        self.remove_padding = remove_padding  # micro-batches by length, each forward cut to its longest row
        self.on_policy = mini_batches == 1 and ppo_epochs == 1  # one update per batch: ratio 1, old = current
        # a gradient-level update on one mini-batch takes its first step's per-objective gradients on the whole batch
        # at the weights before the update: batch_gradients' numbers, which update(keep_gradients=True) returns
        self.update_has_batch_gradients = method.level == "gradient" and mini_batches == 1

    def plan(self, batch):
        """The update's mini-batches of this rank's rows, each as (its rows, its micro-batches)."""
        n = batch.completion_mask.size(0)
        return [(mb, micro_batches(batch, mb, self.micro_batch, self.remove_padding))
                for mb in chunks(n, n // self.mini_batches)]

    @torch.no_grad()
    def logprobs(self, batch):
        """No-grad log-probs (n, C) of every row under the current policy, on the micro-batches the update uses, so
        the first epoch's ratio to these old log-probs is exactly 1 (even with remove_padding's sorted, cut rows)."""
        micro = [rows for _, micro in self.plan(batch) for rows in micro]
        logp = torch.cat([rollout.completion_logprobs(self.model, batch, rows, self.temperature,
                                                      remove_padding=self.remove_padding) for rows in micro])
        return logp[torch.cat(micro).argsort().to(logp.device)]  # back in batch order

    def _old(self, rows, logp, old_logp, ref_logp):
        """The denominator of the ratio: pi_ref (PAMA), the current policy on policy (ratio 1), else pi_old."""
        return ref_logp[rows] if self.method.ratio_to_reference else logp.detach() if self.on_policy else old_logp[rows]

    def _loss(self, logp, old, adv, mask, ref_logp, rows, entropy=None):
        return loss.policy_loss(logp, old, adv, mask, None if ref_logp is None else ref_logp[rows], self.eps_low,
                                self.eps_high, self.clip_c, self.kl_coef, self.kl_type, entropy, self.entropy_coef)

    def _micro_loss(self, batch, rows, logp, ent, adv, mb_tokens, old_logp, ref_logp, stats):
        """Micro-batch `rows`' share of the policy loss, a token-mean over the global mini-batch of mb_tokens valid
        tokens (times the world size: DDP averages over ranks, this makes it a sum); adds the diagnostics to stats."""
        mask = batch.completion_mask[rows]
        lval, m, _ = self._loss(logp, self._old(rows, logp, old_logp, ref_logp), adv[rows], mask, ref_logp, rows, ent)
        if stats is not None:  # token-weighted, so the means over all ranks equal one process's
            stats["tokens"] += mask.sum().item()
            for key in ("kl", "clipfrac", "entropy"):
                stats[key] += m[key].item() * mask.sum().item()
        return lval * (mask.sum() * world_size() / mb_tokens)

    def _forward(self, batch, rows):
        """Log-probs and entropies (n, C) of rows under the current policy, with autograd."""
        return rollout.completion_logprobs(self.model, batch, rows, self.temperature, with_entropy=True,
                                           remove_padding=self.remove_padding)

    def backward(self, batch, micro, adv, mb_tokens, old_logp, ref_logp, stats=None):
        """Accumulate the policy-loss gradient over the micro-batches `micro` (token-mean over the global mini-batch
        of mb_tokens valid tokens), adding the diagnostics to `stats`; returns this rank's share of the loss."""
        total = torch.zeros((), device=batch.sequences.device)
        for rows in micro:
            scaled = self._micro_loss(batch, rows, *self._forward(batch, rows), adv, mb_tokens, old_logp, ref_logp,
                                      stats)
            scaled.backward()
            total += scaled.detach() / world_size()
        return total

    def objective_gradients(self, batch, micro, mb_tokens, objective_adv, old_logp, ref_logp, params, stats=None):
        """Per-objective gradients g (K, P) over `params` (this rank's FSDP shards of them), their Gram (K, K) (FSDP:
        the shards' partial Grams add up to the exact one) and losses (K,), each from its own objective's advantages.
        In one process the K losses share each micro-batch's forward (K backward passes through one graph); DDP and
        FSDP sync gradients in hooks that expect one backward per forward, so there each objective runs its own."""
        K = objective_adv.shape[1]
        losses = torch.zeros(K, device=objective_adv.device)
        if world_size() == 1 and not self.fsdp:
            g = torch.zeros(K, sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
            for rows in micro:
                logp, ent = self._forward(batch, rows)
                for k in range(K):
                    scaled = self._micro_loss(batch, rows, logp, ent, objective_adv[:, k], mb_tokens, old_logp,
                                              ref_logp, stats if k == 0 else None)
                    grads = torch.autograd.grad(scaled, params, retain_graph=k < K - 1)
                    g[k] += torch.cat([grad.flatten() for grad in grads])
                    losses[k] += scaled.detach()
        else:
            grads = []
            for k in range(K):
                self.optimizer.zero_grad(set_to_none=True)
                losses[k] = self.backward(batch, micro, objective_adv[:, k], mb_tokens, old_logp, ref_logp,
                                          stats if k == 0 else None)
                grads.append(torch.cat([local(p.grad).flatten() for p in params]))
            g = torch.stack(grads)  # (K, P)
        gram = g.double() @ g.double().T
        return g, (all_sum(gram) if self.fsdp else gram), all_sum(losses)

    def batch_gradients(self, batch, objective_adv, old_logp, ref_logp, params=None):
        """Per-objective loss gradients g (K, P) and their Gram (K, K) on this rank's whole batch at the current
        parameters, over `params` (default: every trained parameter); the .grad buffers are left empty."""
        rows = micro_batches(batch, torch.arange(batch.completion_mask.size(0)), self.micro_batch,
                             self.remove_padding)
        tokens = all_sum(batch.completion_mask.sum().float())
        g, gram, _ = self.objective_gradients(batch, rows, tokens, objective_adv, old_logp, ref_logp,
                                              self.params if params is None else params)
        self.optimizer.zero_grad(set_to_none=True)
        return g, gram

    def gram(self, batch, objective_adv, old_logp, ref_logp):
        """The Gram matrix (K, K) of the per-objective gradients on this rank's whole batch before the update (over
        the method's target layers), for methods that observe it (dynamic weighting)."""
        return self.batch_gradients(batch, objective_adv, old_logp, ref_logp, self.gram_params)[1]

    def flat_parameters(self):
        """This rank's trained parameters (its FSDP shards) as one vector (P,), a copy."""
        return torch.cat([local(p).detach().flatten() for p in self.params])

    def first_order_change(self, g, before):
        """The covariance law with shared parameters (paper Thm C.2, first order): objective k's surrogate changes by
        <-g_k, theta_now - theta_before> for the step the optimizer actually made (AdamW's preconditioning included).
        g (K, P): the objectives' loss gradients at theta_before (batch_gradients), before (P,): flat_parameters()
        then. Returns that predicted change (K,) and the cosine between -g_k and the step (K,)."""
        step = self.flat_parameters() - before  # (P,)
        sums = torch.cat([-(g @ step), g.square().sum(1), step.square().sum()[None]]).double()  # (2K + 1,)
        sums = all_sum(sums) if self.fsdp else sums  # FSDP: each rank holds a shard of every vector
        K = g.shape[0]
        change = sums[:K]
        return change, change / (sums[K:2 * K].sqrt() * sums[2 * K].sqrt()).clamp(min=1e-30)

    @torch.no_grad()
    def objective_losses(self, batch, micro, mb_tokens, objective_adv, old_logp, ref_logp):
        """Per-objective policy losses (K,) of a mini-batch at the current parameters, against pi_old (FAMO's losses
        after the step)."""
        K = objective_adv.shape[1]
        losses = torch.zeros(K, device=objective_adv.device)
        for rows in micro:
            logp = rollout.completion_logprobs(self.model, batch, rows, self.temperature,
                                               remove_padding=self.remove_padding)
            old = ref_logp[rows] if self.method.ratio_to_reference else old_logp[rows]
            scale = batch.completion_mask[rows].sum() * world_size() / mb_tokens
            for k in range(K):
                lk = self._loss(logp, old, objective_adv[rows, k], batch.completion_mask[rows], ref_logp, rows)[0]
                losses[k] += lk * scale / world_size()
        return all_sum(losses)

    def update(self, batch, adv, objective_adv, old_logp, ref_logp, keep_gradients=False):
        """Mini-batches x PPO epochs of AdamW steps on this rank's rows. adv (n,) for reward- and advantage-level
        methods; gradient level: objective_adv (n, K) combined by the method's coefficients per mini-batch.
        Returns the advantage each row's update followed (n,) and the loss diagnostics: kl, clipfrac and entropy as
        token-means over every rank's micro-batches, loss and grad_norm as means over the optimizer steps taken,
        and the counts of steps taken ("updates") and skipped. keep_gradients (when update_has_batch_gradients): also
        return, as stats["gradients"], the per-objective gradients (K, P) of the first step, the very numbers
        batch_gradients would have computed before the update (the law test's)."""
        mask, method = batch.completion_mask, self.method
        if keep_gradients and not self.update_has_batch_gradients:
            raise ValueError("keep_gradients needs a gradient-level method on one mini-batch (its first step's "
                             "gradients are then the whole batch's at the weights before the update)")
        n = mask.size(0)
        followed = adv if adv is not None else torch.zeros(n, dtype=objective_adv.dtype, device=mask.device)
        stats = dict(loss=0.0, grad_norm=0.0, kl=0.0, clipfrac=0.0, entropy=0.0, tokens=0, updates=0, skipped=0)
        self.model.train()
        plan = self.plan(batch)
        for _ in range(self.ppo_epochs):
            for mb, micro in plan:
                mb_tokens = all_sum(mask[mb].sum().float())  # valid tokens of this mini-batch on all ranks
                if method.level == "gradient":  # d = sum_k c_k g_k from the Gram matrix (scalarize.py)
                    g, gram, losses = self.objective_gradients(batch, micro, mb_tokens, objective_adv, old_logp,
                                                               ref_logp, self.params, stats)
                    if keep_gradients and "gradients" not in stats:
                        stats["gradients"] = g
                    coef = torch.as_tensor(method.coefficients(gram, losses)).to(g)  # (K,)
                    direction, offset = coef @ g, 0  # (P,)
                    for p in self.params:
                        numel = local(p).numel()
                        part = direction[offset:offset + numel].view_as(local(p))
                        if p.grad is None:  # the shared-forward path computes g without touching .grad
                            p.grad = part.clone()
                        else:
                            local(p.grad).copy_(part)
                        offset += numel
                    total = coef.to(losses) @ losses
                    followed[mb] = objective_adv[mb] @ coef.to(objective_adv)
                else:
                    self.optimizer.zero_grad(set_to_none=True)
                    total = all_sum(self.backward(batch, micro, adv, mb_tokens, old_logp, ref_logp, stats))
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                if not (torch.isfinite(total) and torch.isfinite(grad_norm)):  # skip: the weights stay as they are
                    stats["skipped"] += 1
                    continue
                self.optimizer.step()
                if method.needs_losses_after:  # FAMO: the same mini-batch's losses after the step
                    method.after_step(self.objective_losses(batch, micro, mb_tokens, objective_adv, old_logp,
                                                            ref_logp))
                stats["updates"] += 1
                stats["loss"] += total.item()
                stats["grad_norm"] += grad_norm.item()
        self.optimizer.zero_grad(set_to_none=True)  # free the gradients: the next rollout's KV cache needs the memory
        sums = all_sum(torch.tensor([stats[k] for k in ("kl", "clipfrac", "entropy", "tokens")], dtype=torch.float64,
                                    device=mask.device)).tolist()
        stats.update({k: v / max(sums[3], 1) for k, v in zip(("kl", "clipfrac", "entropy"), sums)})
        stats.update({k: stats[k] / max(stats["updates"], 1) for k in ("loss", "grad_norm")})
        return followed, stats

    def clipped_weights(self, batch, followed, old_logp, ref_logp):
        """CTWA's completion-level clipped advantage weight w (n,) under the current (updated) policy, with the
        update's own advantage, ratio and clip (ctwa.completion_weights), and the fraction of unclipped tokens."""
        old = ref_logp if self.method.ratio_to_reference else old_logp
        return ctwa.completion_weights(self.logprobs(batch), old, followed, batch.completion_mask, self.eps_low,
                                       self.eps_high, self.method.w_agg)
