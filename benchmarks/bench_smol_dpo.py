"""One LoRA DPO step on SmolLM2-135M-Instruct: effective FLOP/s against a plain fp32 matmul, where the time
goes, and peak memory.

The step is :func:`mfnb.training.dpo.dpo_update` (TRL's DPOTrainer) on a LoRA-wrapped SmolLM2 with the project's
default :class:`mfnb.models.LoraParams`, on chat-templated verifiable-instruction prompts with two sampled
responses each (chosen, rejected), ``--batch`` pairs per step. Its useful work is counted as 6N FLOPs per
token: a policy forward and the backward to the activations (2N + 2N; LoRA needs no gradient of the frozen
weights) and a reference forward (2N), N the base model's parameters and the tokens those of the chosen and
rejected sequences, padding not counted. The yardstick is a plain fp32 ``torch.mm`` (the largest of the
model's matmul shapes at this batch's token count, and a square 2048^3) timed in the same process with the
same threads. Printed, all from one run:

* seconds per step (median over ``--steps`` after a warm-up step), effective FLOP/s, the ratio to the matmul,
  each by wall time and by this process's CPU time (on a CPU shared with other jobs the wall-time ratio moves
  with their load; with one thread the CPU-time ratio does not);
* where a step's wall time goes, from one profiled step (torch.profiler, self CPU time of each op, grouped:
  matmul / linear, attention, optimizer (grad clipping, AdamW, zero_grad), data (batch fetch, collation),
  other torch ops, and the rest outside any torch op: Python in the Trainer, TRL, peft), and the top ops;
* peak RSS during the DPO update (trainer setup and TRL's tokenisation included) and RSS before it;
* with ``--world-build [CMD]``: the peak RSS of a world build in a fresh process (default: the smol world);
* the step's speed levers (:class:`mfnb.training.config.DPOParams`), ``--levers``: the plain step and each lever,
  interleaved in one run (``--rounds`` times over), each from the same fresh adapter on the same rows and seed:
  seconds per step, the ratio to the matmul (real tokens only; for the precomputed reference, also amortised over
  the precompute, which is one reference forward per row done before the first step instead of in each step), the
  peak RSS above the RSS before it and the bytes the autograd graph keeps for a backward (in one process: after
  the first variant, freed memory stays in the process's heap under the allocator setting, so only the first
  variant's figure is clean; ``--isolate`` runs each variant's update in a fresh process, on the rows sampled once,
  so that every figure is), and the effect on the result: the mean DPO loss of the update and the adapter after it
  against the plain step's (``|a - a_plain| / |a_plain - a_0|``, tolerance ``TOLERANCE``). The variants: ``plain``
  (every lever off), one per lever (``precompute``, ``completion``, ``micro``: ``--micro`` pairs per forward,
  ``grouped``), ``exact`` (the levers that keep the update: the params' defaults plus the micro-batch) and ``all``.

    python benchmarks/bench_smol_dpo.py                       # batch 4, 3 timed steps, 1 thread (~5 min, shared)
    python benchmarks/bench_smol_dpo.py --threads 2 --bf16    # levers: threads, bf16 autocast (native bf16 only)
    python benchmarks/bench_smol_dpo.py --steps 0 --world-build   # only the world build's peak memory
    python benchmarks/bench_smol_dpo.py --batch 8 --threads 2 --steps 2 --isolate --no-profile \\
        --levers plain,completion,micro,precompute,exact,all       # each lever, a clean memory figure for each
"""
from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peak_memory import current_peak, current_rss, peak_rss_of_command, reset_peak  # noqa: E402

GOAL = 0.6  # issue 28: the step's effective FLOP/s (real tokens) over the plain matmul's
MEMORY_GOAL_GIB = 4.0  # peak RSS above the loaded model at 8 pairs


def levers(micro: int) -> dict[str, dict]:
    """The DPOParams of each variant: "plain" turns every lever off, each other variant turns one on (the micro-batch
    ``micro`` pairs); "exact": the levers that leave the update as it was (the params' defaults and the memory lever);
    "all": every lever."""
    plain = {"completion_only_logits": False}
    one = {"precompute": {"precompute_ref_log_probs": True}, "completion": {"completion_only_logits": True},
           "micro": {"micro_batch_size": micro}, "grouped": {"group_by_length": True}}
    exact = {**one["completion"], **one["precompute"], **one["micro"]}
    return {"plain": plain, **{k: {**plain, **v} for k, v in one.items()}, "exact": exact,
            "all": {**exact, **one["grouped"]}}


# the adapter after the update within this of the plain update's (relative to the plain update's change), and the
# mean loss within TOLERANCE_LOSS: exact levers (float rounding only) pass, length grouping (other batches) need not
TOLERANCE, TOLERANCE_LOSS = 1e-3, 1e-4
WORLD_BUILD = "from mfnb.worlds import make_world; make_world({'kind': 'smol'}).build()"
LM_HEAD = "LM-head log-probs, non-matmul"
GROUPS = ("matmul / linear", "attention", LM_HEAD, "optimizer", "data (fetch, collation)", "other torch ops",
          "outside torch ops (Python)")


def matmul_flops(m: int, k: int, n: int, dtype=torch.float32, seconds: float = 1.0) -> tuple[float, float]:
    """Best FLOP/s of ``(m x k) @ (k x n)`` over repeats filling about ``seconds`` (after a warm-up call), by wall
    time and by this process's CPU time."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.empty(m, n, dtype=dtype)
    torch.mm(a, b, out=out)
    best, best_cpu, spent = float("inf"), float("inf"), 0.0
    while spent < seconds:
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b, out=out)
        took, took_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        best, best_cpu, spent = min(best, took), min(best_cpu, max(took_cpu, 1e-9)), spent + took
    return 2 * m * k * n / best, 2 * m * k * n / best_cpu


def preference_rows(model, tokenizer, n_pairs: int, response_tokens: int, seed: int):
    """``n_pairs`` chat-templated verifiable-instruction prompts, each with two responses SmolLM2 sampled."""
    from mfnb.models import SamplingParams
    from mfnb.models.engines.hf import HFEngine
    from mfnb.worlds.shared.best_of_k import chat_prompt
    from mfnb.worlds.smol.task import InstructionParams, InstructionSet

    tasks = InstructionSet(InstructionParams(n_train=n_pairs, n_validation=0, n_test=0, seed=seed))
    prompts = [chat_prompt(tokenizer, p) for p in tasks.prompts["train"]]
    sampling = SamplingParams(max_new_tokens=response_tokens, temperature=0.7, top_p=0.9, batch_size=64)
    out = HFEngine(model, tokenizer, dtype="float32").generate(prompts + prompts, sampling, seed=seed)
    return prompts, out.texts[:n_pairs], out.texts[n_pairs:]


def make_trainer_cls(record: dict):
    """DPOTrainer recording each forward's real and padded token counts (the collated [chosen; rejected] batch of
    a micro-batch) and the bytes its autograd graph keeps for the backward (activations and the LM head's saved
    tensors; the model's own weights, which the graph also holds, not counted)."""
    from trl import DPOTrainer

    class CountingDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                record["precompute"] = record.get("precompute", 0.0) + time.perf_counter() - start

        def compute_loss(self, model, inputs, *args, **kwargs):
            if not model.training:
                return super().compute_loss(model, inputs, *args, **kwargs)
            record["tokens"].append(int(inputs["attention_mask"].sum()))
            record["padded"].append(int(inputs["attention_mask"].numel()))
            record["shape"] = tuple(inputs["input_ids"].shape)
            weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
            saved: dict[int, int] = {}

            def pack(t):
                storage = t.untyped_storage()
                if storage.data_ptr() not in weights and t.device.type != "meta":
                    saved[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = super().compute_loss(model, inputs, *args, **kwargs)
            record["saved"].append(sum(saved.values()))
            return loss

    return CountingDPOTrainer


def make_callback(record: dict, profiler=None):
    """Wall time of each step, end to end (batch fetch included), and of its optimizer part."""
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["train_begin"] = time.perf_counter()
            record["last_end"], record["last_end_cpu"] = record["train_begin"], time.process_time()

        def on_step_begin(self, args, state, control, **kwargs):
            record["step_begin"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            record["pre_opt"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now, now_cpu = time.perf_counter(), time.process_time()
            record["steps"].append({"total": now - record["last_end"], "cpu": now_cpu - record["last_end_cpu"],
                                    "data": record["step_begin"] - record["last_end"],
                                    "forward_backward": record["pre_opt"] - record["step_begin"],
                                    "optimizer": now - record["pre_opt"]})
            record["last_end"], record["last_end_cpu"] = now, now_cpu
            # the step's forwards (one per micro-batch): their tokens, and the largest graph kept for a backward
            mark = record.get("mark", 0)
            record["step_tokens"].append(sum(record["tokens"][mark:]))
            record["step_padded"].append(sum(record["padded"][mark:]))
            record["step_saved"].append(max(record["saved"][mark:], default=0))
            record["mark"] = len(record["tokens"])
            if profiler is not None:
                profiler.step()

    return Timing()


def run_dpo(model, tokenizer, rows, batch: int, steps: int, *, bf16: bool, profiler=None,
            levers: dict | None = None) -> dict:
    """``steps`` DPO steps of ``batch`` pairs through :func:`mfnb.training.dpo.dpo_update` with the DPOParams
    ``levers``; timings, token counts and the update's metrics."""
    from mfnb.training.config import DPOParams
    from mfnb.training.dpo import dpo_update, preference_dataset

    prompts, chosen, rejected = rows
    # every row sampled (at least ``steps`` batches' worth) is in the dataset, the update stopped after ``steps``
    # steps: length grouping sorts within groups of up to 50 batches, so it needs more rows than the steps take
    data = preference_dataset(prompts, chosen, rejected)
    record = {"tokens": [], "padded": [], "saved": [], "steps": [], "step_tokens": [], "step_padded": [],
              "step_saved": []}
    start = time.perf_counter()
    params = DPOParams(batch_size=batch, epochs=1, lr=1e-5, **(levers or {}))
    record["metrics"] = dpo_update(
        model, tokenizer, data, params, seed=0, trainer_cls=make_trainer_cls(record),
        trainer_kwargs={"callbacks": [make_callback(record, profiler)]},
        config_overrides={"max_steps": steps,
                          **({"bf16": True, "use_cpu": not torch.cuda.is_available()} if bf16 else {})})
    record["setup"] = record["train_begin"] - start
    record["wall"] = time.perf_counter() - start
    return record


def group_of(event) -> str:
    """The group an op's self time belongs to: by what encloses it (optimizer, data loading, TRL's fused LM head,
    whose CPU fallback folds full-vocabulary tiles with elementwise torch ops), else by its name."""
    if event.name.startswith("ProfilerStep"):  # the step's own span: its self time is Python outside any op
        return "outside torch ops (Python)"
    in_lm_head = False
    parent = event
    while parent is not None:
        name = parent.name
        in_lm_head = in_lm_head or name.startswith("ChunkedLogProbFunction")
        if name.startswith(("Optimizer.step", "Optimizer.zero_grad")):
            return "optimizer"
        if name.startswith("enumerate(DataLoader)"):
            return "data (fetch, collation)"
        parent = parent.cpu_parent
    name = event.name.lower()
    if in_lm_head and not name.startswith(("aten::mm", "aten::addmm")):
        return LM_HEAD
    if name.startswith("aten::_foreach") or "clip_grad" in name:
        return "optimizer"
    if any(k in name for k in ("attention", "sdpa", "_flash", "softmax_backward", "aten::_softmax", "aten::softmax")):
        return "attention"
    if any(k in name for k in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm",
                               "mkldnn_linear", "mkldnn_matmul")):
        return "matmul / linear"
    return "other torch ops"


def breakdown(prof) -> tuple[dict[str, float], list[tuple[str, str, float, int]], float]:
    """Self CPU seconds per group over the profiled step, the top ops, and the matmuls' achieved FLOP/s."""
    groups: dict[str, float] = defaultdict(float)
    ops: dict[tuple[str, str], list] = defaultdict(lambda: [0.0, 0])
    mm_flops, mm_seconds = 0.0, 0.0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CPU:
            continue
        seconds = e.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        group = group_of(e)
        groups[group] += seconds
        ops[e.name, group][0] += seconds
        ops[e.name, group][1] += 1
        if group == "matmul / linear" and getattr(e, "flops", 0):
            mm_flops += e.flops
            mm_seconds += seconds
    top = sorted(((name, group, s, c) for (name, group), (s, c) in ops.items()), key=lambda x: -x[2])[:15]
    return dict(groups), top, (mm_flops / mm_seconds if mm_seconds else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per step (2x sequences)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step); 0: no DPO run")
    ap.add_argument("--response-tokens", type=int, default=96, help="at most this many tokens per sampled response")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a busy CPU; 0: torch's default)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in the trainer (DPOConfig bf16=True)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled step")
    ap.add_argument("--levers", default="plain", help="comma-separated variants of the step, run interleaved: "
                                                      f"{', '.join(levers(2))} (default: plain only)")
    ap.add_argument("--micro", type=int, default=None, help="pairs per micro-batch of the micro variant (default: "
                                                            "half the batch)")
    ap.add_argument("--isolate", action="store_true",
                    help="each variant's update in a fresh process (the rows sampled once, here): a clean peak-memory "
                         "figure for every variant, at the cost of a model load per variant")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)       # --isolate's worker: <variant>:<dir>
    ap.add_argument("--pairs", type=int, default=None,
                    help="rows in the dataset (default and least: enough for the steps); the update stops after the "
                         "steps, so more rows cost only sampling (and the precompute), and let length grouping "
                         "group (transformers groups within megabatches of N / (4 x batch) batches, at most 50)")
    ap.add_argument("--rounds", type=int, default=1, help="times over the variants (interleaved; medians printed)")
    ap.add_argument("--profile-variant", default=None, help="the variant profiled (default: the last of --levers)")
    ap.add_argument("--world-build", nargs="?", const=f"{shlex.quote(sys.executable)} -c {shlex.quote(WORLD_BUILD)}",
                    default=None, metavar="CMD", help="also the peak RSS of a world build in a fresh process "
                                                     "(default command: build the smol world)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    if args.steps > 0:
        dpo_benchmark(args)
    if args.world_build:
        print(f"\nworld build in a fresh process: {args.world_build}", flush=True)
        run = peak_rss_of_command(args.world_build)
        status = "ok" if run.returncode == 0 else f"FAILED (exit status {run.returncode})"
        print(f"world build: peak RSS {run.peak_mib:.0f} MiB, {run.seconds:.1f} s wall, {status}")


LEVERS: dict[str, dict] = {}  # the variants' DPOParams, as this run's --micro made them


def measure(policy, tokenizer, rows, args, lever: dict, initial: dict) -> dict:
    """One update of ``1 + args.steps`` steps from the adapter ``initial``: its record (timings, tokens, memory, the
    adapter after it)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    set_peft_model_state_dict(policy, initial)
    gc.collect()
    rss_before = current_rss()
    exact_peak = reset_peak()
    record = run_dpo(policy, tokenizer, rows, args.batch, 1 + args.steps, bf16=args.bf16, levers=lever)
    record.update(rss_before=rss_before, peak=current_peak(), exact_peak=exact_peak,
                  adapter={k: v.clone() for k, v in get_peft_model_state_dict(policy).items()})
    return record


def _load_smollm2(args):
    """SmolLM2-135M-Instruct and its tokenizer."""
    from mfnb.models import load_model, load_tokenizer
    from mfnb.worlds.smol.smollm2 import smollm2_path

    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    return tokenizer, model


def _fresh_adapter(model, seed: int):
    """The model with a fresh LoRA adapter, the same one for a given seed in every process."""
    from mfnb.models import LoraParams, attach_lora

    torch.manual_seed(seed)
    return attach_lora(model, LoraParams())


def child(args) -> None:
    """--isolate's worker: one variant's update in this fresh process, its record and adapter written to files."""
    import transformers
    from safetensors.torch import save_file

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    variant, scratch, round_ = args.child.split(":")
    with open(os.path.join(scratch, "rows.json")) as f:
        rows = tuple(json.load(f))
    tokenizer, model = _load_smollm2(args)
    policy = _fresh_adapter(model, args.seed)
    from peft import get_peft_model_state_dict

    initial = {k: v.clone() for k, v in get_peft_model_state_dict(policy).items()}
    importlib.import_module("trl")  # importing TRL is not the update's memory

    with torch.no_grad():  # the process's one-time costs (first kernels), as the in-process variants had them paid
        policy(**tokenizer([rows[0][0] + rows[1][0]], return_tensors="pt"))
    record = measure(policy, tokenizer, rows, args, levers(args.micro or max(1, args.batch // 2))[variant], initial)
    stem = os.path.join(scratch, f"{variant}-{round_}")
    save_file({k: v.contiguous() for k, v in record.pop("adapter").items()}, stem + ".safetensors")
    with open(stem + ".json", "w") as f:
        json.dump(record, f, default=list)


def run_child(args, variant: str, scratch: str, round_: int) -> dict:
    """One variant's update in a fresh process (see :func:`child`); its record, with the adapter read back."""
    from safetensors.torch import load_file

    argv = [a for a in sys.argv[1:] if a != "--isolate"]
    command = [sys.executable, os.path.abspath(__file__), *argv, "--child", f"{variant}:{scratch}:{round_}"]
    done = subprocess.run(command, check=False)
    stem = os.path.join(scratch, f"{variant}-{round_}")
    if done.returncode != 0 or not os.path.exists(stem + ".json"):
        raise SystemExit(f"[{variant}] the isolated update failed (exit status {done.returncode}): {shlex.join(command)}")
    with open(stem + ".json") as f:
        record = json.load(f)
    record["adapter"] = load_file(stem + ".safetensors")
    return record


def dpo_benchmark(args) -> None:
    import transformers
    import trl

    from mfnb.models import LoraParams
    from mfnb.models.engines.hf import native_bf16

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.bf16 and not native_bf16():
        print("note: bf16 is emulated on this CPU (no AVX512-BF16/AMX): expect it slower than fp32")
    tokenizer, model = _load_smollm2(args)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = model.config
    threads = torch.get_num_threads()
    steps = 1 + args.steps
    t0 = time.perf_counter()
    rows = preference_rows(model, tokenizer, max(args.pairs or 0, args.batch * max(steps, 3)), args.response_tokens,
                           args.seed)
    sampled = time.perf_counter() - t0
    policy = _fresh_adapter(model, args.seed)
    lora = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    print(f"SmolLM2-135M-Instruct: N = {n_params / 1e6:.1f}M parameters, LoRA {LoraParams().model_dump()} "
          f"({lora / 1e6:.2f}M trainable); trl {trl.__version__}, torch {torch.__version__}, {threads} thread(s), "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}; load average {os.getloadavg()[0]:.1f}; "
          f"{2 * len(rows[0])} responses sampled in {sampled:.0f} s", flush=True)

    # the yardstick first, then the step, then the yardstick again: the better of the two is the peak
    tokens_guess = 2 * args.batch * 170
    shapes = [(tokens_guess, cfg.hidden_size, cfg.intermediate_size), (2048, 2048, 2048)]
    peak_before = {s: matmul_flops(*s) for s in shapes}

    variants = [v.strip() for v in args.levers.split(",") if v.strip()]
    lever_params = levers(args.micro or max(1, args.batch // 2))
    unknown = [v for v in variants if v not in lever_params]
    if unknown:
        raise SystemExit(f"--levers: unknown {unknown}; known: {list(lever_params)}")
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    initial = {k: v.clone() for k, v in get_peft_model_state_dict(policy).items()}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-smol-dpo-") as scratch:
        if args.isolate:
            with open(os.path.join(scratch, "rows.json"), "w") as f:
                json.dump(rows, f)
        for round_ in range(args.rounds):
            for variant in variants:  # interleaved: each round runs every variant once, from the same fresh adapter
                if args.isolate:
                    runs[variant].append(run_child(args, variant, scratch, round_))
                else:
                    runs[variant].append(measure(policy, tokenizer, rows, args, lever_params[variant], initial))
    set_peft_model_state_dict(policy, initial)
    LEVERS.update(lever_params)

    padded_all = [p / max(1, len(r["padded"]) // len(r["steps"])) for v in variants for r in runs[v]
                  for p in r["step_padded"][1:]]
    m = int(statistics.mean(padded_all))  # tokens of one forward (a micro-batch where the step has several)
    shapes[0] = (m, cfg.hidden_size, cfg.intermediate_size)
    peak_after = {s: matmul_flops(*s) for s in shapes}
    # the yardstick: the best matmul rate seen (before or after the steps), by wall and by CPU time
    mm = {s: tuple(max(x) for x in zip(peak_before.get(s, (0.0, 0.0)), peak_after[s])) for s in shapes}
    yard_shape = max(mm, key=lambda s: mm[s][0])
    # by CPU time, the square matmul only: a small one's CPU time is under-counted with several threads (seen: the
    # same GFLOP/s by CPU time as by wall on 2 threads), which would halve the CPU-time ratio
    yard_wall, yard_cpu = mm[yard_shape][0], mm[(2048, 2048, 2048)][1]
    yard = yard_wall
    for s in shapes:
        print(f"  fp32 matmul {s[0]}x{s[1]} @ {s[1]}x{s[2]}, {threads} thread(s): {mm[s][0] / 1e9:.1f} GFLOP/s "
              f"by wall, {mm[s][1] / 1e9:.1f} by CPU time")

    plain = runs.get("plain", [None])[0]
    for variant in variants:
        recs = runs[variant]
        timed = [s for r in recs for s in r["steps"][1:]]
        tokens = [t for r in recs for t in r["step_tokens"][1:]]
        padded = [p for r in recs for p in r["step_padded"][1:]]
        effective = statistics.median(6 * n_params * t / s["total"] for t, s in zip(tokens, timed))
        effective_cpu = statistics.median(6 * n_params * t / s["cpu"] for t, s in zip(tokens, timed))
        ratio, ratio_cpu = effective / yard_wall, effective_cpu / yard_cpu
        share = statistics.median(s["cpu"] / s["total"] for s in timed)
        setup = statistics.median(r["setup"] for r in recs)
        print(f"\n[{variant}] DPOParams {LEVERS[variant] or '(no lever)'}: {args.batch} pairs = {2 * args.batch} "
              f"sequences, padded to {statistics.mean(padded) / (2 * args.batch):.0f} tokens on average; "
              f"{statistics.mean(tokens):.0f} real tokens per step ({sum(tokens) / sum(padded):.0%} of the padded "
              f"batch)")
        print(f"  seconds per step (median of {len(timed)} after a warm-up step): "
              f"{statistics.median(s['total'] for s in timed):.2f} s wall "
              f"[data {statistics.median(s['data'] for s in timed):.2f}, forward+backward "
              f"{statistics.median(s['forward_backward'] for s in timed):.2f}, optimizer "
              f"{statistics.median(s['optimizer'] for s in timed):.2f}], "
              f"{statistics.median(s['cpu'] for s in timed):.2f} s "
              f"CPU ({share:.0%} of wall x 1 core); warm-up step {recs[0]['steps'][0]['total']:.2f} s; trainer setup "
              f"(TRL tokenisation included) {setup:.1f} s")
        print(f"  effective FLOP/s (6N x real tokens / step time): {effective / 1e9:.1f} GFLOP/s by wall, "
              f"{effective_cpu / 1e9:.1f} by CPU time")
        print(f"  RATIO effective / fp32 matmul: {ratio:.2f} by wall, {ratio_cpu:.2f} by CPU time (goal >= {GOAL}; "
              f"on a shared CPU the CPU-time ratio is the steadier one{'' if threads == 1 else ', for 1 thread'})"
              f"{'' if max(ratio, ratio_cpu) >= GOAL else '  BELOW GOAL'}")
        if variant == "plain":
            print(f"  counting padding tokens too: ratio {ratio * sum(padded) / sum(tokens):.2f} by wall, "
                  f"{ratio_cpu * sum(padded) / sum(tokens):.2f} by CPU time (the gap is what padding costs)")
        if LEVERS[variant].get("precompute_ref_log_probs"):
            # the precompute covers every row once: its share of a step is its time x batch / rows (one epoch); in a
            # fresh process (--isolate) it is the process's first forward, so it carries the warm-up too
            extra = statistics.median(r.get("precompute", 0.0) for r in recs)
            per_step = extra * args.batch / len(rows[0])
            step_wall = statistics.median(s["total"] for s in timed)
            amortised = statistics.median(6 * n_params * t / (s["total"] + per_step) for t, s in zip(tokens, timed))
            print(f"  with the precompute amortised over one epoch ({extra:.1f} s for {len(rows[0])} rows: "
                  f"{per_step:.2f} s a step): {step_wall + per_step:.2f} s a step, ratio {amortised / yard_wall:.2f} "
                  f"by wall")
        rec = recs[0]
        above = (rec["peak"] - rec["rss_before"]) / 2**30
        clean = args.isolate or variant == variants[0]
        print(f"  peak memory: RSS {rec['rss_before'] / 2**20:.0f} MiB before the update (model loaded: its weights "
              f"{4 * n_params / 2**20:.0f} MiB in fp32), {rec['peak'] / 2**20:.0f} MiB peak during it "
              f"(+{above:.2f} GiB; goal <= {MEMORY_GOAL_GIB:g} GiB at 8 pairs"
              f"{'' if above <= MEMORY_GOAL_GIB else ', ABOVE GOAL'})"
              + ("" if rec["exact_peak"] else " [high-water mark since process start: /proc/self/clear_refs not "
                                               "writable]")
              + ("" if clean else " [after another variant in this process: memory it freed is reused unseen; "
                                  "--isolate gives every variant a clean figure]"))
        forwards = max(1, len(rec["padded"]) // len(rec["steps"]))
        print(f"    of which the autograd graph one forward keeps for its backward (activations, the LM head's saved "
              f"tensors; largest of the step's {forwards} forward(s)): {max(rec['step_saved']) / 2**30:.2f} GiB; "
              f"the rest is the step's transient tensors (logit tiles, attention scores, gradients), TRL's "
              f"tokenised rows and the allocator's slack")
        if plain is not None and variant != "plain":
            change = torch.sqrt(sum(((plain["adapter"][k] - initial[k]) ** 2).sum() for k in initial))
            diff = torch.sqrt(sum(((rec["adapter"][k] - plain["adapter"][k]) ** 2).sum() for k in initial))
            rel = float(diff / change)
            loss, loss_plain = rec["metrics"]["train_loss"], plain["metrics"]["train_loss"]
            same = rel <= TOLERANCE and abs(loss - loss_plain) <= TOLERANCE_LOSS
            print(f"  result: mean DPO loss {loss:.6f} (plain {loss_plain:.6f}, diff {loss - loss_plain:+.2e}); "
                  f"adapter |a - a_plain| / |a_plain - a_0| = {rel:.2e}: "
                  f"{'within' if same else 'NOT within'} tolerance (adapter {TOLERANCE:g}, loss {TOLERANCE_LOSS:g})"
                  + (" [other batches than plain's: not expected to match]"
                     if LEVERS[variant].get("group_by_length") else ""))
        elif variant == "plain":
            print(f"  result: mean DPO loss {rec['metrics']['train_loss']:.6f}")
        if variant == "completion" and args.batch >= 4 and not args.bf16:
            # the step as the smol params run it (DPOParams' defaults), for the cost estimate: real tokens a second
            from mfnb.estimate.throughput import record_rates

            rate = statistics.median(t / s["total"] for t, s in zip(tokens, timed))
            record_rates("bench_smol_dpo.py", f"SmolLM2-135M-Instruct LoRA DPO, {args.batch} pairs a step, real "
                         f"tokens / step wall, median of {len(timed)} step(s)",
                         {"DPOParams defaults (completion-only LM head)": (rate, "")}, kind="training",
                         profile="smol", threads=threads)

    if not args.no_profile:
        profiled = args.profile_variant or variants[-1]
        set_peft_model_state_dict(policy, initial)
        from torch.profiler import ProfilerActivity, profile, schedule

        # step 1: warm-up (not recorded), step 2: profiler warm-up, step 3: recorded
        with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=1, warmup=1, active=1),
                     with_flops=True, record_shapes=False) as prof:
            prof_record = run_dpo(policy, tokenizer, rows, args.batch, 3, bf16=args.bf16, profiler=prof,
                                  levers=LEVERS[profiled])
        step_wall = prof_record["steps"][2]["total"]
        groups, top, mm_rate = breakdown(prof)
        print(f"\nwhere a step goes ([{profiled}]: one profiled step, {step_wall:.2f} s wall with the profiler on: self time of the "
              f"torch ops in each group and the step's Python time outside any op, as shares of that wall):")
        for g in GROUPS:
            print(f"  {g:30s} {groups.get(g, 0.0):6.2f} s  {groups.get(g, 0.0) / step_wall:6.1%}")
        print(f"  matmuls inside the step ran at {mm_rate / 1e9:.1f} GFLOP/s "
              f"({mm_rate / yard:.2f} of the plain matmul)")
        print("\ntop ops by self CPU time:")
        for name, group, seconds, calls in top:
            print(f"  {name[:60]:60s} {seconds:7.3f} s  {calls:6d} calls  [{group}]")


if __name__ == "__main__":
    main()
