"""Who generates and who learns in Algorithm 2: the LoRA policy (the student being aligned) and the experts.

:class:`PolicyBackend` works on any world (:mod:`mfnb.worlds`): the policy is a LoRA adapter on
``world.load(student)``, trained by TRL's DPOTrainer (its SFTTrainer for the SFT baseline); expert responses
come from ``world.respond(role, ...)`` (a model, a best-of-k procedure or a served hub model, whatever the
world's expert is). Tests drive the
algorithm with scripted backends that follow the same :class:`Backend` protocol.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping, Protocol

import numpy as np

from mfnb.models import LoraParams, SamplingParams
from mfnb.training.config import DPOParams, SFTParams

if TYPE_CHECKING:  # annotations only: a sampling-only install (a GPU node checking the device tests) may lack torch
    import torch


@dataclass(frozen=True)
class Prompts:
    train: list[str]
    validation: list[str]
    test: list[str]


class Backend(Protocol):
    """What the algorithm needs from models: a resettable, saveable, trainable policy and expert answers."""

    roles: list[str]

    def reset_policy(self, seed: int, lora: LoraParams) -> None: ...
    def save_policy(self, path: Path) -> None: ...
    def load_policy(self, path: Path) -> None: ...
    def policy_vector(self, path: Path | None = None) -> np.ndarray: ...
    def generate_student(self, prompts: list[str], seed: int, sampling: SamplingParams) -> list[str]: ...
    def generate_expert(self, role: str, prompts: list[str], seed: int, sampling: SamplingParams) -> list[str]: ...
    def update(self, prompts: list[str], chosen: list[str], rejected: list[str], seed: int,
               dpo: DPOParams) -> dict: ...
    def sft_update(self, prompts: list[str], completions: list[str], seed: int, sft: SFTParams) -> dict: ...


def lora_vector(tensors: Mapping[str, "torch.Tensor"]) -> np.ndarray:
    """Tensors as one float32 vector, sorted by name; each is copied to the CPU first (numpy reads no CUDA
    memory), in its own dtype (bf16 has no numpy type: it is widened on the CPU, halving the copy)."""
    return np.concatenate([tensors[k].detach().cpu().float().flatten().numpy() for k in sorted(tensors)])


@contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft's PeftModel reads transformers' deprecated ``is_gradient_checkpointing`` on every wrap and
    warns each time; the warning says nothing about our runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


class PolicyBackend:
    """A world's student as a LoRA policy, and the world's experts' responses."""

    def __init__(self, world, student: str = "student", launch=None):
        self.world = world
        self.launch = launch  # mfnb.training.config.LaunchParams: DPO / SFT steps under accelerate launch; None: here
        self.student = student
        self.roles = list(world.roles)
        self.key = f"{world.key}-{student}"  # part of every run's identity
        self.policy = None
        self.tokenizer = None
        if hasattr(world, "check"):  # e.g. the paper world: a model not in the hub cache fails now, not hours in
            world.check()

    @property
    def prompts(self) -> Prompts:
        p = self.world.prompts
        return Prompts(p["train"], p["validation"], p["test"])

    def _fresh_base(self):
        model, tokenizer = self.world.load(self.student)
        self.tokenizer = tokenizer
        return model

    def reset_policy(self, seed: int, lora: LoraParams) -> None:
        import torch

        from mfnb.models import attach_lora  # deferred: loads torch

        base = self._fresh_base()
        with torch.random.fork_rng(devices=[]), _quiet_peft():
            torch.manual_seed(seed)  # LoRA A is random; B = 0 so the policy starts as the student
            self.policy = attach_lora(base, lora)

    def save_policy(self, path: Path) -> None:
        from mfnb.models import save_adapter  # deferred: loads torch

        save_adapter(self.policy, path)

    def load_policy(self, path: Path) -> None:
        from mfnb.models import load_adapter  # deferred: loads torch

        with _quiet_peft():
            self.policy = load_adapter(self._fresh_base(), path, trainable=True)
        self.policy.eval()

    def policy_vector(self, path: Path | None = None) -> np.ndarray:
        """The trainable LoRA weights as one vector (sorted by name), of the live policy or a saved one."""
        if path is None:
            from peft import get_peft_model_state_dict

            tensors = get_peft_model_state_dict(self.policy)
        else:
            from safetensors.torch import load_file

            tensors = load_file(str(Path(path) / "adapter_model.safetensors"))
        return lora_vector(tensors)

    def generate_student(self, prompts, seed, sampling):
        from mfnb.models import generate  # deferred: loads torch

        return generate(self.policy, self.tokenizer, list(prompts), sampling, seed=seed, show_progress=False)

    def generate_expert(self, role, prompts, seed, sampling):
        return self.world.respond(role, list(prompts), sampling, seed)

    def update(self, prompts, chosen, rejected, seed, dpo):
        from mfnb.training.dpo import dpo_update, preference_dataset  # deferred: loads torch

        data = preference_dataset(list(prompts), list(chosen), list(rejected), drop_identical=dpo.drop_identical)
        with _quiet_peft():
            metrics = dpo_update(self.policy, self.tokenizer, data, dpo, seed=seed, launch=self.launch)
        metrics["pairs_used"] = len(data)
        return metrics

    def sft_update(self, prompts, completions, seed, sft):
        """Supervised fine-tuning of the LoRA policy on (prompt, expert response) rows, loss on the response
        only (TRL's SFTTrainer through :func:`mfnb.training.sft.train`)."""
        from mfnb.training.runtime import quiet_transformers  # deferred: loads torch
        from mfnb.training.sft import train  # deferred: loads torch

        rows = [{"prompt": p, "completion": " " + c.strip()} for p, c in zip(prompts, completions)]
        with _quiet_peft(), quiet_transformers():
            metrics = train(self.policy, self.tokenizer, rows, lr=sft.lr, batch_size=sft.batch_size, seed=seed,
                            steps=sft.steps, epochs=sft.epochs, warmup_ratio=sft.warmup_ratio,
                            scheduler=sft.scheduler, max_length=sft.max_length,
                            gradient_accumulation_steps=sft.grad_accum,
                            gradient_checkpointing=sft.gradient_checkpointing, launch=self.launch,
                            report_to=sft.report_to, logging_dir=sft.logging_dir)
        metrics["rows_used"] = len(rows)
        return metrics
