"""HbAT's memory plan for 7B models, checked on small ones: Eq. 7's change statistics stream tensor by tensor
(never a whole-model float32 copy or difference), equal the former whole-model formula, and take their
"before" copy from host memory under full fine-tuning; the penalty held by a launching process keeps no
anchors."""
from __future__ import annotations

import json
import subprocess
import sys
import weakref
from collections.abc import Mapping

import pytest
import torch

from mfnb import hbat
from mfnb.hbat import importance

SHAPES = {"embed.weight": (50, 8), "layers.0.q.weight": (8, 8), "layers.0.q.bias": (8,), "layers.1.mlp.weight": (16, 8),
          "norm.weight": (8,), "head.weight": (3, 8, 2)}


class Tracker:
    """Counts the tensors that lazy mappings made and that are still alive."""

    def __init__(self):
        self.alive = weakref.WeakSet()
        self.most = 0
        self.made = 0

    def new(self, tensor: torch.Tensor) -> torch.Tensor:
        self.alive.add(tensor)
        self.made += 1
        self.most = max(self.most, len(self.alive))
        return tensor


class Lazy(Mapping):
    """Name -> a tensor made on access (the same values each time), as a model too big to copy would hand
    them out: keys cost nothing, values are built one by one."""

    def __init__(self, tracker: Tracker, seed: int, dtype=torch.float32, shift: float = 0.0):
        self.tracker, self.seed, self.dtype, self.shift = tracker, seed, dtype, shift

    def __iter__(self):
        return iter(SHAPES)

    def __len__(self):
        return len(SHAPES)

    def __getitem__(self, name):
        index = list(SHAPES).index(name)
        gen = torch.Generator().manual_seed(1000 * self.seed + index)
        value = torch.randn(SHAPES[name], generator=gen) + self.shift * torch.randn(SHAPES[name], generator=gen)
        return self.tracker.new(value.to(self.dtype))


def _old_formula(before, after):
    """The former whole-model computation (every float32 copy and difference at once), as the reference."""
    names = sorted(before)
    diffs = torch._foreach_sub([after[k].float() for k in names], [before[k].float() for k in names])
    norms = torch._foreach_norm(diffs, 2, dtype=torch.float64)
    return {k: (float(n) ** 2, before[k].numel()) for k, n in zip(names, norms)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_change_sums_stream_one_tensor_at_a_time_and_equal_the_old_formula(dtype):
    tracker = Tracker()
    before, after = Lazy(tracker, 0, dtype), Lazy(tracker, 0, dtype, shift=1e-2)
    sums = hbat.squared_change_sums(before, after)
    assert tracker.made == 2 * len(SHAPES)     # each tensor of each side looked up once
    assert tracker.most <= 2                   # one "before" and one "after" tensor alive at any time
    reference = _old_formula({k: before[k] for k in SHAPES}, {k: after[k] for k in SHAPES})
    assert sums == reference                   # exactly: float32 differences, float64 sums, as before
    assert all(s > 0 for s, _ in sums.values())


def test_change_sums_over_pieces_of_a_large_tensor(monkeypatch):
    """Tensors longer than CHUNK elements are summed piece by piece (bounded temporaries): the same sums up
    to float64 rounding."""
    tracker = Tracker()
    before, after = Lazy(tracker, 1, torch.bfloat16), Lazy(tracker, 1, torch.bfloat16, shift=0.1)
    whole = hbat.squared_change_sums(before, after)
    monkeypatch.setattr(importance, "CHUNK", 7)
    pieces = hbat.squared_change_sums(before, after)
    for k in whole:
        assert pieces[k][1] == whole[k][1] and pieces[k][0] == pytest.approx(whole[k][0], rel=1e-12, abs=0)


def test_snapshot_in_host_memory_and_where_algorithm_1_keeps_it():
    from mfnb.hbat.algorithm import snapshot_device
    from mfnb.models import LoraParams, attach_lora
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    tensors = {"a": torch.randn(3, 2).to(torch.bfloat16), "b": torch.randn(4)}
    copy = hbat.snapshot(tensors, device="cpu")
    assert all(copy[k].dtype == v.dtype and torch.equal(copy[k], v) for k, v in tensors.items())
    assert all(copy[k].data_ptr() != v.data_ptr() for k, v in tensors.items())   # copies, not views
    assert copy["a"].device.type == "cpu"
    model = _new_model(TinyWorldParams(), build_tokenizer())
    assert snapshot_device(model) == "cpu"                    # full fine-tuning: the copy stays off the GPU
    assert snapshot_device(attach_lora(model, LoraParams())) is None   # LoRA: a small copy beside the adapter


def test_run_hbat_takes_its_before_copies_in_host_memory(monkeypatch):
    """Full fine-tuning: every stage's "before" copy is made with device="cpu"."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mfnb.hbat import algorithm
    from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, split_prompts

    devices = []
    real = algorithm.snapshot
    monkeypatch.setattr(algorithm, "snapshot", lambda tensors, device=None: devices.append(device) or real(tensors, device))
    tokenizer = build_tokenizer()
    world = ConflictWorld(ConflictParams(n_sft=4, n_pref=4))
    prompts = split_prompts(TinyWorldParams(n_train=40, n_validation=2, n_test=2))["train"]
    sft_prompts, pref_prompts = world.split_prompts(prompts, 0)
    params = hbat.HbatParams.validate_mapping({
        "n_splits": 1, "sft": {"lr": 1e-2, "batch_size": 2, "epochs": 1.0, "warmup_ratio": 0.0},
        "dpo": {"lr": 1e-2, "batch_size": 2, "epochs": 1.0, "warmup_ratio": 0.0}, "select_by": "last"})
    torch.manual_seed(0)
    micro = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    run = hbat.run_hbat(micro, tokenizer, world.sft_rows(sft_prompts), world.preference_rows(pref_prompts, 0),
                        params, seed=0)
    assert devices == ["cpu", "cpu"] and run.stages[1].constraint == "ewc"
    assert all(any(s > 0 for s, _ in stage.change_sums.values()) for stage in run.stages)   # and both trained


def test_launched_stages_send_a_penalty_without_anchors(monkeypatch):
    """Under a launch the training processes anchor the penalty themselves: the launching process builds it
    without a copy of the parameters."""
    from mfnb.training import launch as launcher
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    sent = []
    monkeypatch.setattr(launcher, "train_in_place", lambda model, tok, data, step, hyper, launch, **kw:
                        sent.append(kw.get("penalty")) or {"world_size": 2})
    tokenizer = build_tokenizer()
    sft = [{"prompt": f"sort these words: w{i} . answer:", "completion": " x"} for i in range(2)]
    pref = [{"prompt": f"sort these words: v{i} . answer:", "chosen": " a", "rejected": " b"} for i in range(2)]
    run = hbat.run_hbat(_new_model(TinyWorldParams(), tokenizer), tokenizer, sft, pref,
                        hbat.HbatParams(n_splits=1, select_by="last"), seed=0, launch={"processes": 2})
    assert [s.constraint for s in run.stages] == ["none", "ewc"] and sent[0] is None
    assert sent[1].anchored is False and sent[1].anchors == [] and len(sent[1].names) > 0
    assert run.stages[1].penalty_bytes == sent[1].state_bytes > 0


def test_a_penalty_without_anchors_holds_no_copy():
    """What a process that launches its stages builds: the coefficients (in host memory, the parameters'
    dtype), the same names and state size, and no anchors."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)).to(torch.bfloat16)
    fisher = {"0.weight": torch.rand(3, 4), "0.bias": torch.rand(3), "1.weight": torch.rand(1, 3), "1.bias": torch.zeros(1)}
    ewc = hbat.EWCParams(importance="fisher", lam=0.5)
    anchored = hbat.EWCPenalty.from_model(model, fisher, ewc)
    bare = hbat.EWCPenalty.from_model(model, fisher, ewc, anchored=False)
    assert bare.anchors == [] and bare.names == anchored.names == ["0.weight", "0.bias", "1.weight"]
    assert bare.state_bytes == anchored.state_bytes == 2 * 2 * (12 + 3 + 3)
    for c, a in zip(bare.coefs, anchored.coefs):
        assert c.device.type == "cpu" and c.dtype == torch.bfloat16 and torch.equal(c, a)
    with pytest.raises(hbat.HbatError, match="no anchors"):
        bare()


_RSS_SCRIPT = r"""
import json, sys
import psutil, torch
torch.set_num_threads(1)
mode, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
from mfnb.hbat.importance import squared_change_sums
before = {f"t{i}": torch.randn(size).to(torch.bfloat16) for i in range(n)}
after = {k: (v.float() + 1e-3).to(torch.bfloat16) for k, v in before.items()}
def high_water():  # VmHWM: the peak resident set since the last reset, in bytes
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:  # reset the peak: imports and set-up must not count
    f.write("5")
base = psutil.Process().memory_info().rss
if mode == "old":
    names = sorted(before)
    diffs = torch._foreach_sub([after[k].float() for k in names], [before[k].float() for k in names])
    norms = torch._foreach_norm(diffs, 2, dtype=torch.float64)
else:
    squared_change_sums(before, after)
peak = high_water()
print(json.dumps({"extra_mb": (peak - base) / 2**20, "model_mb": n * size * 2 / 2**20}))
"""


def peak_extra_mb(mode: str, tensors: int, size: int) -> dict:
    """Peak memory above the two bf16 models while the change sums run, in a fresh process (maxrss)."""
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, mode, str(tensors), str(size)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_change_sums_peak_memory_is_one_tensors_not_the_models():
    """16 bf16 tensors of 2M elements (64 MB a model): the old formula's float32 copies and differences
    need ~6x a bf16 model beyond it (~380 MB); streaming needs about one tensor's temporaries (~40 MB)."""
    new = peak_extra_mb("new", 16, 2 ** 21)
    assert new["extra_mb"] < 1.5 * new["model_mb"], new   # the old formula: ~6x

