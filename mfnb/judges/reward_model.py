"""Reward model: a sequence-classification model's scores, compared."""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from mfnb.core.progress import progress as progress_bar
from mfnb.judges.protocol import Outcome, PairwiseJudge, Triple, _batches, _check_nonneg


class RewardModelJudge(PairwiseJudge):
    """Scores each response with a sequence-classification reward model (one logit) and compares.

    ``model_or_path``: a loaded model or a *local* model folder (never fetched from the hub).
    Text: the tokenizer's chat template over [user: prompt, assistant: response] when the tokenizer has
    a template and the prompt is plain text (holds none of the tokenizer's special tokens); otherwise
    ``prompt + " " + response``.  ``use_chat_template=False`` forces concatenation.  Truncation keeps the
    end of the text (the scored last token).  Tie when |r(a) - r(b)| <= tie_margin.
    ``name`` overrides the model's name in the cache identity; a fingerprint of the weights is always
    part of it, so a retrained model at the same path gets fresh cache rows.
    """

    batch_size = 16
    progress = True

    def __init__(self, model_or_path: Any, tokenizer: Any = None, tie_margin: float = 0.0,
                 batch_size: int | None = None, device: str | None = None, max_length: int = 2048,
                 use_chat_template: bool | None = None, dtype: Any = None, trust_remote_code: bool = False,
                 name: str | None = None, seed: int = 0, cost_per_call: float = 0.0,
                 progress: bool | None = None):
        super().__init__(seed=seed, cost_per_call=cost_per_call, batch_size=batch_size, progress=progress)
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tie_margin = _check_nonneg("RewardModelJudge", "tie_margin", tie_margin)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"RewardModelJudge: max_length must be an int >= 2, got {max_length!r}")
        self.max_length = max_length
        if device is None and not isinstance(model_or_path, (str, os.PathLike)):
            device = str(next(model_or_path.parameters()).device)  # leave a given model where it is
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model_or_path, (str, os.PathLike)):
            path = Path(model_or_path).expanduser()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"RewardModelJudge: reward model folder not found: {path} (only local folders are loaded; "
                    "build or download the model there first)")
            kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}
            if dtype is not None:
                kwargs["dtype"] = dtype
            model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True,
                                                          trust_remote_code=bool(trust_remote_code))
            self.model_name = name or str(path.resolve())
        else:
            model = model_or_path
            if tokenizer is None:
                raise ValueError("RewardModelJudge: tokenizer is required when model_or_path is a model object")
            self.model_name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"RewardModelJudge: the reward model must have num_labels=1, got {num_labels} "
                             f"({self.model_name})")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        if tokenizer.pad_token is None:
            raise ValueError(f"RewardModelJudge: tokenizer of {self.model_name} has no pad, unk or eos token")
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "left"
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        if self.device.type != "cpu":
            from mfnb.models import resident  # deferred: loads torch

            resident(self.model)  # moved off the GPU while launched training runs (mfnb.models.off_accelerator)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if use_chat_template and not has_template:
            raise ValueError(f"RewardModelJudge: use_chat_template=True but the tokenizer of {self.model_name} "
                             "has no chat template")
        self.use_chat_template = has_template if use_chat_template is None else bool(use_chat_template)
        self._special = {t for t in getattr(tokenizer, "all_special_tokens", []) if t}
        self._special |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
                          if getattr(t, "special", False) and t.content}
        self._special.discard(tokenizer.pad_token)
        self._fingerprint = self._weights_fingerprint()

    def _weights_fingerprint(self) -> str:
        import torch

        h = hashlib.blake2b(digest_size=16)
        with torch.no_grad():
            for pname, p in self.model.named_parameters():
                flat = p.detach().reshape(-1)
                step = max(1, flat.numel() // 256)
                h.update(f"{pname}:{tuple(p.shape)}:{p.dtype}".encode())
                h.update(flat[::step][:256].float().cpu().numpy().tobytes())
        tok = self.tokenizer
        h.update(f"{len(tok)}|{getattr(tok, 'chat_template', None)}|{tok.pad_token}".encode())
        return h.hexdigest()

    def _params(self) -> dict[str, Any]:
        return {"model": self.model_name, "weights": self._fingerprint, "tie_margin": self.tie_margin,
                "max_length": self.max_length, "chat_template": self.use_chat_template}

    @property
    def order_symmetric(self) -> bool:
        return True

    def format_text(self, prompt: str, response: str) -> tuple[str, bool]:
        """The text the model scores, and whether it already holds the special tokens."""
        prompt = self.query(prompt)
        if self.use_chat_template and not any(t in prompt for t in self._special):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False), True
        return prompt + " " + response, False

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Reward of each (prompt, response), batched, in input order."""
        import torch

        if len(prompts) != len(responses):
            raise ValueError(f"RewardModelJudge.score: {len(prompts)} prompts but {len(responses)} responses")
        texts = [self.format_text(p, r) for p, r in zip(prompts, responses)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i][0]))  # similar lengths share a batch
        scores: list[float] = [math.nan] * len(texts)
        batches = list(_batches(order, self.batch_size))
        iterator: Iterable = batches
        if self.progress and len(batches) > 1:
            iterator = progress_bar(batches, desc="reward model", leave=False)
        with torch.no_grad():
            for idx in iterator:
                for templated in (True, False):  # templated text already carries bos/eos
                    group = [i for i in idx if texts[i][1] == templated]
                    if not group:
                        continue
                    enc = self.tokenizer([texts[i][0] for i in group], return_tensors="pt", padding=True,
                                         truncation=True, max_length=self.max_length,
                                         add_special_tokens=not templated)
                    enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                    logits = self.model(**enc).logits.float().reshape(len(group), -1)[:, 0].cpu().tolist()
                    for i, value in zip(group, logits):
                        scores[i] = float(value)
        return scores

    def _judge_presented(self, batch: Sequence[Triple]) -> list[Outcome]:
        prompts = [p for p, _, _ in batch] * 2
        responses = [a for _, a, _ in batch] + [b for _, _, b in batch]
        scores = self.score(prompts, responses)
        n = len(batch)
        out = []
        for ra, rb in zip(scores[:n], scores[n:]):
            diff = ra - rb
            if not math.isfinite(diff):
                out.append(Outcome.FAILED)
            elif abs(diff) <= self.tie_margin:
                out.append(Outcome.TIE)
            else:
                out.append(Outcome.WIN if diff > 0 else Outcome.LOSE)
        self._count_calls(n)
        return out
