"""How well does the smol reward model (MiniLM + head, TRL RewardTrainer) agree with IFEval's checker? (A
measurement, not a speed target.)

SmolLM2 samples for ``--prompts`` prompts of the instruction set's held-out reward stream (stored in the
mfnb cache with the experts' samples), checker-ranked pairs (real sample pairs, plus a perturbation of each
sample unless ``--no-perturb``), a split of the prompts into train and test, training (cached by
configuration), then the agreement on the test pairs, overall, on real-sample pairs only, and per
constraint. Also printed: the agreement on pairs of the world's *test* split (samples drawn for
``--test-prompts`` test prompts), which no part of the reward model saw.

    python benchmarks/smol_reward_agreement.py
    python benchmarks/smol_reward_agreement.py --prompts 40 --samples 2 --new-tokens 64   # quick
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--test-prompts", type=int, default=50)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--no-perturb", action="store_true")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--exclude", default=None, help="instruction ids left out, comma-separated (default: "
                    "mfnb.worlds.smol.task.NEVER_FOLLOWED_BY_SMOLLM2)")
    ap.add_argument("--constraints", default="3,3", help="min,max constraints per prompt")
    args = ap.parse_args()

    from mfnb.models import SamplingParams, load_model, load_tokenizer
    from mfnb.models.engines.hf import HFEngine
    from mfnb.worlds.shared.best_of_k import BestOfK
    from mfnb.worlds.smol.reward import (SmolRewardParams, agreement, build_smol_reward_model, ranked_pairs,
                                         reward_judge, reward_model_path, reward_rows)
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
    sampler = BestOfK(HFEngine(model, tokenizer, threads=args.threads), tokenizer,
                      lambda p, r: tuple(tasks.score(p, r)[:2]), sampling, seed=0, model_id=folder.name)
    params = SmolRewardParams(n_prompts=args.prompts, samples=args.samples, perturb=not args.no_perturb,
                              epochs=args.epochs, lr=args.lr)
    print(f"reward stream: {args.prompts} prompts x {args.samples} SmolLM2 samples (<= {args.new_tokens} tokens), "
          f"perturbations {'on' if params.perturb else 'off'}; load average {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    train, test = reward_rows(tasks, sampler, params, show_progress=True)
    print(f"pairs: {len(train)} train, {len(test)} test (disjoint prompts); sampling {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    path = build_smol_reward_model(train, params, reward_model_path(tasks.key + "-" + sampler.store.path.stem, params),
                                   show_progress=True)
    print(f"reward model: {path} ({time.perf_counter() - start:.0f} s to train or load)")
    judge = reward_judge(path, params)
    ids = lambda p: tasks.task(p).instruction_id_list  # noqa: E731
    result = agreement(judge, test, ids)
    real = [r for r in test if not r["perturbed"]]
    print(f"\nagreement with the checker on held-out pairs: {result['accuracy']:.3f} over {result['pairs']} pairs; "
          f"on pairs of two real samples: {agreement(judge, real)['accuracy']:.3f} over {len(real)}")
    print("by constraint of the pair's prompt (pairs, accuracy):")
    for i, v in result["by_instruction"].items():
        print(f"  {i:48s} {v['pairs']:4d}  {v['accuracy']:.3f}")
    prompts = tasks.prompts["test"][: args.test_prompts]
    samples = sampler.candidates(prompts, args.samples, show_progress=True)
    test_rows = ranked_pairs(prompts, [[c.text for c in cs] for cs in samples], lambda p, r: tuple(tasks.score(p, r)[:2]),
                             params.model_copy(update={"perturb": False}), seed=1)
    print(f"\nworld test split ({len(prompts)} prompts, real sample pairs only): agreement "
          f"{agreement(judge, test_rows)['accuracy']:.3f} over {len(test_rows)} pairs")


if __name__ == "__main__":
    main()
