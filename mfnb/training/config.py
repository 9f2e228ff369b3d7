"""The training steps' parameters (SFT, DPO), how they launch (processes, accelerate/DeepSpeed configs) and
the spec a launched process runs: a leaf the method packages and the launch both read."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from mfnb.core import paths
from mfnb.core.params import Params
from mfnb.models.config import LoraParams


Reporter = Literal["none", "tensorboard", "trackio", "wandb"]
# the package each integration of transformers needs (tensorboard: torch's SummaryWriter, or tensorboardX)
_REPORTER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",), "wandb": ("wandb",)}


def reporters(value: Any) -> Any:
    """``report_to`` as a list: one name or a list of them (checked by the field's type afterwards)."""
    return [value] if isinstance(value, str) else value


def check_reporters(value: list[str]) -> list[str]:
    """``none`` stands alone, and each integration's package is installed: a run that would fail only when its
    first trainer starts, maybe hours in, is refused when the params are read."""
    if not value:
        return ["none"]
    if "none" in value and len(value) > 1:
        raise ValueError("'none' cannot be combined with other integrations")
    for name in value:
        packages = _REPORTER_PACKAGES.get(name, ())
        if packages and not any(importlib.util.find_spec(p) for p in packages):
            raise ValueError(f"{name!r} needs the {packages[0]} package (pip install {packages[0]})")
    return list(dict.fromkeys(value))


# report_to as the params give it (one name or a list), checked when they are read
Reporters = Annotated[list[Reporter], BeforeValidator(reporters), AfterValidator(check_reporters)]


class TrainingLogs(Params):
    """Where a training step's curves go (transformers' own integrations). Logging does not change what is trained,
    so both fields are left out of every dump, hence of every cache key whatever their values; the launch carries
    them in :class:`TrainSpec`'s own fields, and code that rebuilds params from a dump puts them back with
    :func:`dump_with_logs`."""

    report_to: Reporters = Field(default_factory=lambda: ["none"], exclude=True)
    # a run logs to <logging_dir>/<step>-<date>-<time>; None: $MFNB_CACHE/logs/<step> (outlives the step's output)
    logging_dir: str | None = Field(default=None, exclude=True)


def dump_with_logs(params: Params) -> dict[str, Any]:
    """``params.model_dump()`` with the logging fields of every :class:`TrainingLogs` inside put back: for code
    that rebuilds params from a dump (a dump alone would reset them to ``none``). Never a cache key."""
    values = params.model_dump()
    _put_back_logs(params, values)
    return values


def _put_back_logs(params: Params, values: dict[str, Any]) -> None:
    if isinstance(params, TrainingLogs):
        values.update(report_to=list(params.report_to), logging_dir=params.logging_dir)
    for name in type(params).model_fields:
        inner = getattr(params, name)
        if isinstance(inner, Params) and isinstance(values.get(name), dict):
            _put_back_logs(inner, values[name])


class SFTParams(TrainingLogs):
    """One SFT stage (HbAT's paper setting: lr 1e-5, batch 64, 3 epochs)."""

    lr: float = Field(default=1e-5, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    epochs: float = Field(default=3.0, gt=0)
    steps: int | None = Field(default=None, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    scheduler: str = "cosine"
    max_length: int = Field(default=512, ge=8)
    # recompute activations in the backward: less memory, ~30% more time; left out of dumps when off, so the
    # cache keys made before it existed stay the same
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)


class DPOParams(TrainingLogs):
    """One DPO update. Paper defaults where the paper gives them (cosine schedule, 10% warm-up)."""

    lr: float = Field(default=5e-6, gt=0)
    beta: float = Field(default=0.1, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    scheduler: str = "cosine"
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    max_length: int = Field(default=512, ge=8)
    reference: Literal["base", "previous"] = "base"
    drop_identical: bool = False
    # recompute activations in the backward: less memory, ~30% more time; left out of dumps when off, so the
    # cache keys made before it existed stay the same
    gradient_checkpointing: bool = Field(default=False, exclude_if=lambda v: not v)
    # The step's speed and memory levers, each left out of dumps at its default, so committed results and the cache
    # keys made before they existed stay the same (see benchmarks/bench_smol_dpo.py for what each buys). The exact
    # ones (same update up to float rounding) are on by default; those that change the update are off.
    # The reference's log-probs computed once, before the first step, in batches of ``precompute_ref_batch_size``
    # (None: the micro-batch), instead of a reference forward every step (TRL's ``precompute_ref_log_probs``): the
    # reference is fixed during an update, so the loss is the same up to float rounding.
    precompute_ref_log_probs: bool = Field(default=False, exclude_if=lambda v: not v)
    precompute_ref_batch_size: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)
    # The LM head and its log-softmax over completion positions only (prompt and padding positions skipped). TRL's
    # fused LM head does this on Triton devices only and scores every position elsewhere (CPU included); the masked
    # positions are discarded, so the result is the same up to float rounding: on by default.
    completion_only_logits: bool = Field(default=True, exclude_if=lambda v: v)
    # Pairs per forward/backward (None: batch_size): each update's batch_size pairs run as batch_size /
    # micro_batch_size micro-batches with gradient accumulation, the same pairs in the same order, so the update is
    # the same up to float rounding (except an epoch's last update when its pairs do not fill whole micro-batches),
    # with the activations, logits and padding of the smaller batch. A memory lever: micro-batches of 2 pairs kept a
    # SmolLM2 step of 8 pairs at +2.9 GiB instead of +13.6 on CPU (benchmarks/README.md, Training).
    micro_batch_size: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)
    # Batches of pairs of similar length (transformers' group_by_length sampler): less padding, but other batches
    # than the default random order, so a different (not worse) update. TRL 1.16's own ``padding_free`` is
    # "temporarily unavailable" in its DPOTrainer (it warns and pads) and needs FlashAttention anyway, which does not
    # run on CPU: length grouping is the padding lever that does.
    group_by_length: bool = Field(default=False, exclude_if=lambda v: not v)

    @model_validator(mode="after")
    def _micro_batches_fill_the_batch(self) -> DPOParams:
        if self.micro_batch_size is not None and self.batch_size % min(self.micro_batch_size, self.batch_size):
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide batch_size ({self.batch_size}): "
                             f"each update's pairs run as whole micro-batches")
        return self

    def micro_batches(self) -> tuple[int, int]:
        """(pairs per forward/backward, micro-batches per update): ``batch_size`` as micro-batches. A launch splits
        the batch over processes (``model_copy``, unvalidated): each then takes the largest micro-batch up to
        ``micro_batch_size`` that divides its share, so the update's batch is never cut."""
        micro = min(self.micro_batch_size or self.batch_size, self.batch_size)
        while self.batch_size % micro:
            micro -= 1
        return micro, self.batch_size // micro


SHIPPED_CONFIGS = ("ddp", "deepspeed_zero2", "deepspeed_zero3")


class DistributedError(RuntimeError):
    """A launch that cannot start or a training process that failed; the message names the file or log."""


class TrainSpec(Params):
    """One training step, complete enough to run in a fresh process."""

    step: Literal["sft", "dpo"]
    model: str                                   # base model: folder or hub name
    data: str | None = None                      # a `datasets` folder (save_to_disk) or a .jsonl/.json/.parquet file
    output: str                                  # the trained adapter (or full model) goes here
    adapter: str | None = None                   # continue this LoRA adapter (e.g. the previous round's policy)
    lora: LoraParams | None = LoraParams()       # a fresh adapter when ``adapter`` is None; None: full fine-tuning
    sft: SFTParams = SFTParams()
    dpo: DPOParams = DPOParams()
    global_batch_size: int | None = Field(default=None, ge=1)  # split over processes x grad_accum when set
    seed: int = 0
    dtype: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    trust_remote_code: bool = False
    show_progress: bool = False
    trainable: list[str] | None = None           # parameter names that train (None: as loaded); HbAT-Freeze
    penalty: str | None = None                   # a penalty's coefficients (HbAT's EWC: a safetensors file)
    # "module:attr" of plugin(model, penalty, step) -> (trainer class, trainer kwargs) that rebuilds the penalty in
    # each process (HbAT's: mfnb.hbat.ewc:launched_penalty); named, so the launch imports no method package
    penalty_plugin: str | None = None
    # the step's training curves (as in SFTParams/DPOParams, whose dumps leave them out): None takes the step
    # params' own; the launch fills them in, with the run's name, so that every process logs to one folder.
    # Left out of dumps when None, so a spec dumps as it did before they existed
    report_to: Reporters | None = Field(default=None, exclude_if=lambda v: v is None)
    logging_dir: str | None = Field(default=None, exclude_if=lambda v: v is None)
    run_name: str | None = Field(default=None, exclude_if=lambda v: v is None)

    def logs(self) -> dict[str, Any]:
        """``report_to``, ``logging_dir`` and ``run_name`` of the step: the spec's own where set, else its
        step params'."""
        params = self.sft if self.step == "sft" else self.dpo
        return {"report_to": self.report_to if self.report_to is not None else list(params.report_to),
                "logging_dir": self.logging_dir if self.logging_dir is not None else params.logging_dir,
                "run_name": self.run_name}


class LaunchParams(Params):
    """How many processes and which engine. ``config``: a shipped name (``ddp``, ``deepspeed_zero2``,
    ``deepspeed_zero3``) or a path to an accelerate config YAML. ``processes="all"``: one per visible GPU."""

    processes: Annotated[int, Field(ge=1)] | Literal["all"] = 1
    config: str = "ddp"
    cpu: bool | None = None                      # None: CPU (gloo) when no GPU is visible
    main_process_port: int | None = Field(default=None, ge=1, le=65535)  # None: a free port
    keep_workdir: bool = False

    @field_validator("config")
    @classmethod
    def _config_parses(cls, config: str) -> str:
        """A config that is missing or does not parse (its DeepSpeed JSON included) is refused when the params
        are read, before anything runs, naming the file."""
        try:
            read_config(config)
        except DistributedError as err:
            raise ValueError(str(err).removeprefix("launch.config: ")) from None
        return config

    @property
    def deepspeed_stage(self) -> int | None:
        config = read_config(self.config)
        if config["distributed_type"] != "DEEPSPEED":
            return None
        ds = config.get("deepspeed_config") or {}
        if ds.get("deepspeed_config_file"):
            stage = (read_deepspeed_json(Path(ds["deepspeed_config_file"])).get("zero_optimization") or {}).get("stage")
        else:
            stage = ds.get("zero_stage")
        return int(stage) if stage is not None else 0


def config_path(config: str) -> Path:
    """The accelerate config YAML for a shipped name or a path."""
    if config in SHIPPED_CONFIGS:
        return paths.project_root() / "configs" / "accelerate" / f"{config}.yaml"
    return Path(config).expanduser()


def read_config(config: str) -> dict:
    """The accelerate config, checked: the YAML parses to a mapping and, for DeepSpeed, the DeepSpeed JSON it
    names parses too (its path resolved to an absolute one under key ``deepspeed_config_file``)."""
    import yaml

    path = config_path(config)
    if not path.is_file():
        raise DistributedError(f"launch.config: accelerate config {path} not found (shipped: {list(SHIPPED_CONFIGS)})")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DistributedError(f"launch.config: {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict) or "distributed_type" not in values:
        raise DistributedError(f"launch.config: {path} is not an accelerate config (a mapping with distributed_type)")
    ds = values.get("deepspeed_config") or {}
    if values["distributed_type"] == "DEEPSPEED" and ds.get("deepspeed_config_file"):
        ds_path = Path(ds["deepspeed_config_file"]).expanduser()
        if not ds_path.is_absolute():
            ds_path = (paths.project_root() / ds_path) if not (path.parent / ds_path).is_file() else path.parent / ds_path
        read_deepspeed_json(ds_path, named_in=path)
        values["deepspeed_config"] = {**ds, "deepspeed_config_file": str(ds_path.resolve())}
    return values


def read_deepspeed_json(path: Path, named_in: Path | None = None) -> dict:
    where = f" (named in {named_in})" if named_in else ""
    if not path.is_file():
        raise DistributedError(f"DeepSpeed config {path}{where} not found")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistributedError(f"DeepSpeed config {path}{where} does not parse: {err}") from None
    if not isinstance(values, dict):
        raise DistributedError(f"DeepSpeed config {path}{where} is not a JSON object")
    return values


def gpu_count() -> int:
    import torch  # the CLI checks params without loading torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
