"""Sampling a trained (LoRA) SmolLM2 the way notebooks 03 and 04 do: ``mfnb.models.generate`` with and without
``sampling.engine``.

Without an engine, ``generate`` calls transformers' ``generate`` on the PeftModel: every linear layer runs its
LoRA branch at every decoded token, in fp32. With ``engine: {kind: hf, dtype: ...}`` it folds the adapter into a
copy (at the adapter's current scaling, so ExPO's alpha is honoured) and samples that with our decode loop
(:mod:`mfnb.models.engines.hf`). The adapter here is random (lora_B ~ N(0, 0.01)): speed does not depend on what was
learned. Configurations run interleaved, round after round, each on its own slice of prompts; printed: seconds,
tokens and tokens/s per configuration (median over rounds) and each one's ratio to transformers' generate.

    python benchmarks/bench_trained_sampling.py                 # 40 prompts x 64 tokens (notebook 03's sweep), 2 rounds
    python benchmarks/bench_trained_sampling.py --quick         # 8 prompts x 16 tokens, 1 round
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=40, help="prompts per configuration and round (03: n_select 40)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the smol notebooks use 2)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.rounds = 8, 16, 1

    from mfnb.models import LoraParams, SamplingParams, attach_lora, generate, load_model, load_tokenizer
    from mfnb.worlds.smol.smollm2 import smollm2_path
    from mfnb.worlds.smol.task import InstructionParams, InstructionSet

    torch.set_num_threads(args.threads)
    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    model = attach_lora(model, LoraParams(r=8, alpha=16, target_modules="all-linear"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.01)
    base = dict(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.9, top_k=40, batch_size=64)
    configs = [("transformers generate, LoRA, fp32 (no engine)", SamplingParams(**base)),
               ("engine hf, merged copy, fp32", SamplingParams(**base, engine={"kind": "hf", "dtype": "float32"})),
               ("engine hf, merged copy, bf16", SamplingParams(**base, engine={"kind": "hf", "dtype": "bfloat16"}))]
    tasks = InstructionSet(InstructionParams(n_train=args.prompts * args.rounds * len(configs), n_validation=0, n_test=0))
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in tasks.prompts["train"]]
    slices = iter(chat[i:i + args.prompts] for i in range(0, len(chat), args.prompts))
    speed: dict[str, list[float]] = {name: [] for name, _ in configs}
    ratio: dict[str, list[float]] = {name: [] for name, _ in configs}
    for rnd in range(args.rounds):
        this_round = {}
        for name, sampling in configs:
            prompts = next(slices)
            start = time.perf_counter()
            texts = generate(model, tokenizer, prompts, sampling, seed=rnd, show_progress=False)
            seconds = time.perf_counter() - start
            tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
            this_round[name] = tokens / seconds
            speed[name].append(tokens / seconds)
            print(f"round {rnd}  {name:48s} {seconds:6.1f} s  {tokens:5d} tokens  {tokens / seconds:6.1f} tok/s",
                  flush=True)
        reference = this_round[configs[0][0]]
        for name in this_round:
            ratio[name].append(this_round[name] / reference)
    print(f"\n{args.prompts} prompts x {args.new_tokens} new tokens, {args.threads} threads, {args.rounds} round(s); "
          "median tok/s and ratio to transformers' generate on the LoRA model (same round):")
    for name, _ in configs:
        print(f"  {name:48s} {statistics.median(speed[name]):6.1f} tok/s  {statistics.median(ratio[name]):4.2f}x")


if __name__ == "__main__":
    main()
