"""One LoRA SFT step on SmolLM2-135M-Instruct (an HbAT SFT stage's step on smol): effective FLOP/s against a plain
fp32 matmul, peak memory, and what the completion-only LM head changes.

The step is :func:`mfnb.training.sft_trainer.fit` (TRL's SFTTrainer, loss on completions only) on chat-templated
verifiable-instruction prompts with a SmolLM2 response each, ``--batch`` rows per step, with the project's
default :class:`mfnb.models.LoraParams`. Useful work: 4N FLOPs per real token (forward, and the backward to the
activations; LoRA needs no gradient of the frozen weights), padding not counted. The variants, interleaved in one
process from the same fresh adapter on the same rows: ``plain`` (TRL's CPU path: the LM head over every
position) and ``completion`` (the LM head over completion tokens only, the default); each prints seconds per step,
the ratio to the matmul by wall and CPU time, the peak RSS above the RSS before it (clean for the first variant
only: freed memory stays in the heap under the allocator setting), and the adapter after the update against the
plain one's (``|a - a_plain| / |a_plain - a_0|``).

    python benchmarks/bench_smol_sft.py --batch 8 --threads 2 --steps 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_smol_dpo import GOAL, matmul_flops, preference_rows  # noqa: E402
from peak_memory import current_peak, current_rss, reset_peak  # noqa: E402

VARIANTS = {"plain": False, "completion": True}   # completion_only_logits
TOLERANCE = 1e-3


def make_trainer_cls(record: dict):
    """SFTTrainer recording each step's real and padded token counts."""
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                mask = inputs["attention_mask"]
                record["tokens"].append(int(mask.sum()))
                record["padded"].append(int(mask.numel()))
            return super().compute_loss(model, inputs, *args, **kwargs)

    return CountingSFTTrainer


def make_callback(record: dict):
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["last"], record["last_cpu"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            now, now_cpu = time.perf_counter(), time.process_time()
            record["steps"].append((now - record["last"], now_cpu - record["last_cpu"]))
            record["last"], record["last_cpu"] = now, now_cpu

    return Timing()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="rows per step")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up step)")
    ap.add_argument("--response-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1, help="times over the variants (interleaved; medians printed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers
    from datasets import Dataset
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from mfnb.models import LoraParams, attach_lora, load_model, load_tokenizer
    from mfnb.training import sft_trainer
    from mfnb.worlds.smol.smollm2 import smollm2_path

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    n_params = sum(p.numel() for p in model.parameters())
    steps = 1 + args.steps
    prompts, responses, _ = preference_rows(model, tokenizer, args.batch * steps, args.response_tokens, args.seed)
    data = Dataset.from_list([{"prompt": p, "completion": r} for p, r in zip(prompts, responses)])
    torch.manual_seed(args.seed)
    policy = attach_lora(model, LoraParams())
    cfg = model.config
    shapes = [(2 * args.batch * 120, cfg.hidden_size, cfg.intermediate_size), (2048, 2048, 2048)]
    yard = [matmul_flops(*s) for s in shapes]
    initial = {k: v.clone() for k, v in get_peft_model_state_dict(policy).items()}
    print(f"SmolLM2-135M-Instruct LoRA SFT: N = {n_params / 1e6:.1f}M, {args.batch} rows a step, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}", flush=True)

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant, completion_only in VARIANTS.items():
            set_peft_model_state_dict(policy, initial)
            record = {"tokens": [], "padded": [], "steps": []}
            rss_before, exact = current_rss(), reset_peak()
            record["metrics"] = sft_trainer.fit(
                policy, tokenizer, data, lr=1e-3, batch_size=args.batch, seed=0, steps=steps, max_length=256,
                trainer_cls=make_trainer_cls(record), trainer_kwargs={"callbacks": [make_callback(record)]},
                completion_only_logits=completion_only)
            record.update(rss_before=rss_before, peak=current_peak(), exact=exact,
                          adapter={k: v.clone() for k, v in get_peft_model_state_dict(policy).items()})
            runs[variant].append(record)
    yard = [tuple(max(a, b) for a, b in zip(before, matmul_flops(*s))) for before, s in zip(yard, shapes)]
    yard_wall, yard_cpu = max(y[0] for y in yard), yard[-1][1]  # by CPU time the square one (see bench_smol_dpo)
    print(f"  fp32 matmul (best of {shapes}): {yard_wall / 1e9:.1f} GFLOP/s by wall, {yard_cpu / 1e9:.1f} by CPU time")

    plain = runs["plain"][0]
    for variant, recs in runs.items():
        timed = [s for r in recs for s in r["steps"][1:]]
        tokens = [t for r in recs for t in r["tokens"][1:]]
        padded = [p for r in recs for p in r["padded"][1:]]
        wall = statistics.median(4 * n_params * t / s[0] for t, s in zip(tokens, timed)) / yard_wall
        cpu = statistics.median(4 * n_params * t / s[1] for t, s in zip(tokens, timed)) / yard_cpu
        rec = recs[0]
        print(f"\n[{variant}] completion_only_logits={VARIANTS[variant]}: "
              f"{statistics.median(s[0] for s in timed):.2f} s a step wall, "
              f"{statistics.median(s[1] for s in timed):.2f} s CPU; {statistics.mean(tokens):.0f} real tokens a step "
              f"({sum(tokens) / sum(padded):.0%} of the padded batch)")
        print(f"  RATIO effective (4N x real tokens) / fp32 matmul: {wall:.2f} by wall, {cpu:.2f} by CPU time "
              f"(the DPO step's goal: >= {GOAL})")
        print(f"  peak memory: +{(rec['peak'] - rec['rss_before']) / 2**30:.2f} GiB above {rec['rss_before'] / 2**20:.0f} "
              f"MiB" + ("" if variant == "plain" else " [after plain in this process: memory it freed is reused unseen]")
              + ("" if rec["exact"] else " [high-water mark since process start]"))
        if variant != "plain":
            change = torch.sqrt(sum(((plain["adapter"][k] - initial[k]) ** 2).sum() for k in initial))
            diff = torch.sqrt(sum(((rec["adapter"][k] - plain["adapter"][k]) ** 2).sum() for k in initial))
            rel = float(diff / change)
            print(f"  result: train loss {rec['metrics']['train_loss']:.6f} (plain {plain['metrics']['train_loss']:.6f});"
                  f" adapter |a - a_plain| / |a_plain - a_0| = {rel:.2e}: "
                  f"{'within' if rel <= TOLERANCE else 'NOT within'} tolerance {TOLERANCE:g}")


if __name__ == "__main__":
    main()
