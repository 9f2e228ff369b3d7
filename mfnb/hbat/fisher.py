"""The original EWC's importance (the HbAT paper's Appendix B, after Kirkpatrick et al. 2017): the diagonal of
the empirical Fisher information, one value per *element*,

    F_j = 1/|D| sum_{(x, y) in D} (d log p_theta(y | x) / d theta_j)^2,

estimated on the data of the stage that just ended, at its final parameters, from one gradient per example
(which is what makes it expensive: the paper's Table 7 compares its time and memory with the modified EWC's
per-tensor change statistics).  Per-example gradients are computed ``batch_size`` at a time with
``torch.func.vmap`` (right-padded sequences; a causal model never attends to the padding, which is masked out
of the log-probability), or one backward pass per example with ``batch_size=1``.  ``y`` is the SFT completion,
or the *chosen* response of a preference pair (the generative probability of the preferred answer).  The model
is in eval mode (no dropout) while the gradients are taken; its own ``.grad`` buffers are left empty afterwards.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import torch

from mfnb.hbat.config import HbatError
from mfnb.hbat.importance import canonical_name

RESPONSE_KEY = {"sft": "completion", "dpo": "chosen"}


def _example_ids(tokenizer, prompt: str, response: str, max_length: int) -> tuple[torch.Tensor, int]:
    """Token ids of prompt + response (+ EOS, as TRL's SFT trains it) and the prompt's length."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + response)["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:  # the tokenizer merged across the boundary: tokenize apart
        ids = prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return torch.tensor(ids[:max_length]), min(len(prompt_ids), max_length)


def response_log_prob(model, ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """log p(response | prompt): the sum of the response tokens' log-probabilities."""
    logits = model(input_ids=ids[None].to(model.device)).logits[0, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[1:, None].to(logits.device))[:, 0]
    return logp[max(prompt_length - 1, 0):].sum()


def empirical_fisher(model, tokenizer, rows: Sequence[Mapping[str, str]], kind: str, *,
                     max_length: int = 512, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Canonical tensor name -> the diagonal empirical Fisher of ``rows`` (same shape as the tensor, float32),
    over ``model``'s trainable tensors; ``kind`` "sft" uses each row's completion, "dpo" its chosen response."""
    if kind not in RESPONSE_KEY:
        raise HbatError(f"kind: expected 'sft' or 'dpo', got {kind!r}")
    if len(rows) == 0:
        raise HbatError(f"empirical_fisher: no {kind} rows to estimate the Fisher information on")
    if batch_size < 1:
        raise HbatError(f"fisher_batch: must be >= 1, got {batch_size}")
    key = RESPONSE_KEY[kind]
    examples = [_example_ids(tokenizer, row["prompt"], row[key], max_length) for row in rows]
    examples = [(ids, p) for ids, p in examples if len(ids) > p]  # no response token fits: no gradient
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    # the one float32 accumulator per tensor: squares are added into it in place, tensor by tensor, and it is
    # divided in place (a 7B model's Fisher is 27 GB; no second set, no full float32 copy of the gradients)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    was_training = model.training
    model.eval()
    try:
        step = _vmap_squares if batch_size > 1 else _loop_squares
        for start in range(0, len(examples), batch_size):
            step(model, named, examples[start:start + batch_size], fisher)
    finally:
        model.train(was_training)
    for f in fisher.values():
        f.div_(len(rows))
    return {canonical_name(n): f for n, f in fisher.items()}


def _loop_squares(model, named, examples, fisher: dict[str, torch.Tensor]) -> None:
    """Add to ``fisher`` the squared gradient of log p(response | prompt) of each example, one backward
    each; a gradient is squared into its accumulator and released before the next tensor's."""
    names, params = list(named), list(named.values())
    for ids, prompt_length in examples:
        grads = list(torch.autograd.grad(response_log_prob(model, ids, prompt_length), params, allow_unused=True))
        for i, name in enumerate(names):
            g, grads[i] = grads[i], None
            if g is not None:
                g = g.float()
                fisher[name] += g * g    # (not addcmul_: its fused multiply-add rounds differently)
            del g


def _vmap_squares(model, named, examples, fisher: dict[str, torch.Tensor]) -> None:
    """The same from per-example gradients of one right-padded batch (torch.func.vmap over grad), each
    tensor's batch of gradients squared, summed into its accumulator and released in turn."""
    from torch.func import functional_call, grad, vmap

    length = max(len(ids) for ids, _ in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    mask = torch.zeros(len(examples), length)
    for b, (x, prompt_length) in enumerate(examples):
        ids[b, : len(x)] = x
        mask[b, prompt_length: len(x)] = 1.0
    params = {n: p.detach() for n, p in named.items()}

    def log_prob(p, x, m):
        logits = functional_call(model, p, (x[None].to(model.device),)).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, x[1:, None].to(logits.device))[:, 0]
        return (logp * m[1:].to(logp.device)).sum()

    with warnings.catch_warnings():  # attention falls back to a per-example loop inside vmap: still correct
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        grads = vmap(grad(log_prob), in_dims=(None, 0, 0))(params, ids, mask)
    for name in list(grads):
        g = grads.pop(name)
        fisher[name] += (g.float() ** 2).sum(dim=0)
        del g


def add_fisher(total: Mapping[str, torch.Tensor] | None, fisher: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Eq. 10's accumulation for the Fisher: the sum over the objective's stages so far (new tensors)."""
    out = {k: v.clone() for k, v in (total or {}).items()}
    for k, v in fisher.items():
        out[k] = out[k] + v if k in out else v.clone()
    return out


def fisher_bytes(fisher: Mapping[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in fisher.values())


def scaled_fisher(fisher: Mapping[str, torch.Tensor], ewc) -> dict[str, torch.Tensor]:
    """The Fisher as the penalty uses it: ``ewc.fisher_scale`` "raw" leaves it; "fmax" rescales it so that
    its mean over all elements is ``fmax / #tensors``, the modified EWC's mean weight per element when
    Eq. 6's softmax is uniform (the same overall strength at the same lambda, distributed by the Fisher)."""
    if ewc.fisher_scale == "raw" or not fisher:
        return dict(fisher)
    total = sum(float(v.double().sum()) for v in fisher.values())
    count = sum(v.numel() for v in fisher.values())
    if total <= 0:
        return dict(fisher)
    factor = (ewc.fmax / len(fisher)) / (total / count)
    return {k: v * factor for k, v in fisher.items()}
