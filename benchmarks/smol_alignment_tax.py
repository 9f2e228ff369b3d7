"""Is there an alignment tax on SmolLM2? LoRA DPO on VADER-sentiment preferences, instruction following before and
after (a measurement, not a speed target).

Preference pairs (``mfnb.worlds.smol.conflict``): ``--pref-samples`` SmolLM2 samples of each of ``--pairs``
training prompts, chosen = most positive (VADER), rejected = least. One LoRA DPO epoch (TRL DPOTrainer
through ``mfnb.training.dpo``). Then SmolLM2 and the DPO policy answer ``--eval`` validation prompts with the same
per-row seeds (``--eval-samples`` each), and the checker's strict quality and VADER's reward are compared
prompt by prompt (paired mean difference with a 95% t interval). The tax exists if quality falls while
the reward rises.

    python benchmarks/smol_alignment_tax.py                       # 200 pairs, r=8, 1 epoch, 50 eval prompts
    python benchmarks/smol_alignment_tax.py --conflict-rate 1.0   # raters who prefer warm over correct
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch


def paired(a: list[float], b: list[float]) -> str:
    d = [y - x for x, y in zip(a, b)]
    mean = statistics.mean(d)
    half = 1.96 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{statistics.mean(a):.3f} -> {statistics.mean(b):.3f}  (difference {mean:+.3f}, 95% CI [{mean - half:+.3f}, {mean + half:+.3f}])"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200, help="preference prompts")
    ap.add_argument("--pref-samples", type=int, default=4)
    ap.add_argument("--conflict-rate", type=float, default=0.0)
    ap.add_argument("--tone", default="positive", choices=["positive", "negative"])
    ap.add_argument("--eval", type=int, default=50)
    ap.add_argument("--eval-samples", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exclude", default=None, help="instruction ids left out, comma-separated (default: "
                    "mfnb.worlds.smol.task.NEVER_FOLLOWED_BY_SMOLLM2)")
    ap.add_argument("--constraints", default="3,3", help="min,max constraints per prompt")
    args = ap.parse_args()

    from datasets import Dataset

    from mfnb.models import LoraParams, SamplingParams, attach_lora, load_model, load_tokenizer
    from mfnb.models.engines import candidate_seed
    from mfnb.models.engines.hf import HFEngine
    from mfnb.training.config import DPOParams
    from mfnb.training.dpo import dpo_update
    from mfnb.worlds.shared.best_of_k import BestOfK, chat_prompt
    from mfnb.worlds.smol.conflict import SmolConflict, SmolConflictParams
    from mfnb.worlds.smol.smollm2 import smollm2_path
    from mfnb.worlds.smol.task import DEFAULT_IDS, NEVER_FOLLOWED_BY_SMOLLM2, InstructionParams, InstructionSet

    torch.set_num_threads(args.threads)
    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    excluded = list(NEVER_FOLLOWED_BY_SMOLLM2) if args.exclude is None else [i for i in args.exclude.split(",") if i]
    low, high = map(int, args.constraints.split(","))
    tasks = InstructionSet(InstructionParams(instruction_ids=[i for i in DEFAULT_IDS if i not in excluded],
                                             min_constraints=low, max_constraints=high))
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.9, batch_size=64)
    engine = HFEngine(model, tokenizer, dtype="bfloat16", threads=args.threads)
    sampler = BestOfK(engine, tokenizer, lambda p, r: tuple(tasks.score(p, r)[:2]), sampling, seed=0,
                      model_id=folder.name)
    conflict = SmolConflict(tasks, sampler, SmolConflictParams(n_sft=1, n_pref=args.pairs, pref_samples=args.pref_samples,
                                                                conflict_rate=args.conflict_rate, tone=args.tone))
    _, pref_prompts = conflict.split_prompts(tasks.prompts["train"], seed=0)
    print(f"SmolLM2-135M-Instruct, {args.pairs} preference prompts x {args.pref_samples} samples, "
          f"<= {args.new_tokens} tokens, conflict_rate {args.conflict_rate}; load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    rows = conflict.preference_rows(pref_prompts, seed=0, show_progress=True)
    print(f"preference pairs: {len(rows)} (sampling {time.perf_counter() - start:.0f} s); mean reward gap "
          f"{statistics.mean(r['reward_gap'] for r in rows):.3f}, mean quality gap (chosen - rejected) "
          f"{statistics.mean(r['quality_gap'] for r in rows):+.3f}")

    eval_prompts = tasks.prompts["validation"][: args.eval]
    before = sampler.candidates(eval_prompts, args.eval_samples)
    flat_prompts = [p for p in eval_prompts for _ in range(args.eval_samples)]
    before_texts = [c.text for cs in before for c in cs]

    policy = attach_lora(load_model(folder, show_progress=False), LoraParams(r=args.rank, alpha=2 * args.rank))
    dataset = Dataset.from_list([{"prompt": chat_prompt(tokenizer, r["prompt"]), "chosen": r["chosen"],
                                  "rejected": r["rejected"]} for r in rows])
    start = time.perf_counter()
    metrics = dpo_update(policy, tokenizer, dataset, DPOParams(lr=args.lr, beta=args.beta, batch_size=args.batch_size,
                                                               max_length=512), seed=0, show_progress=True)
    print(f"DPO: {time.perf_counter() - start:.0f} s, loss {metrics.get('train_loss', float('nan')):.4f}, "
          f"last rewards/accuracies {metrics.get('rewards/accuracies', float('nan'))}, "
          f"margins {metrics.get('rewards/margins', float('nan'))}")

    after_engine = HFEngine(policy, tokenizer, dtype="bfloat16", threads=args.threads)
    seeds = [candidate_seed(0, p, j) for p in eval_prompts for j in range(args.eval_samples)]
    after = after_engine.generate([chat_prompt(tokenizer, p) for p in flat_prompts], sampling, seeds=seeds)

    def per_prompt(fn, texts):
        values = [fn(p, t) for p, t in zip(flat_prompts, texts)]
        return [statistics.mean(values[i:i + args.eval_samples]) for i in range(0, len(values), args.eval_samples)]

    print(f"\n{len(eval_prompts)} validation prompts x {args.eval_samples} samples, same seeds before and after:")
    print("  instruction following (strict)  " + paired(per_prompt(tasks.quality, before_texts),
                                                      per_prompt(tasks.quality, after.texts)))
    print("  instruction following (loose)   " + paired(per_prompt(lambda p, t: tasks.score(p, t).loose, before_texts),
                                                      per_prompt(lambda p, t: tasks.score(p, t).loose, after.texts)))
    print(f"  VADER reward ({args.tone:8s})     " + paired(per_prompt(conflict.reward, before_texts),
                                                        per_prompt(conflict.reward, after.texts)))
    print("  response tokens                 " + paired(
        [statistics.mean(c.tokens for c in cs) for cs in before],
        [statistics.mean(after.new_tokens[i:i + args.eval_samples]) for i in range(0, len(after.new_tokens), args.eval_samples)]))
    print(f"\nexample after DPO: {after.texts[0][:300]!r}")


if __name__ == "__main__":
    main()
