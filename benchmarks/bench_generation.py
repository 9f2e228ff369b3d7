"""Generation speed on SmolLM2-135M-Instruct: transformers ``generate``, our decode loop (fp32, bf16) and llama.cpp.

All engines get the same kind of chat-templated verifiable-instruction prompts, the same ``max_new_tokens``
and the same sampling (temperature 0.7, top-p 0.9); each configuration gets its own slice of prompts (no
engine profits from having seen a prompt before) and the configurations run interleaved, round after
round, so load changes on a shared machine hit all of them. Printed: tokens/s of each configuration
(median over rounds), the ratio of each to the best llama.cpp configuration *of the same round* (median),
and a best-of-k case (``--k`` samples of each of a few prompts), where repeated prompts can share their
prefill (our loop: one prefill per distinct prompt; llama.cpp: its prompt cache).

    python benchmarks/bench_generation.py                   # 64 prompts x 128 tokens, 2 rounds (~30 min loaded)
    python benchmarks/bench_generation.py --quick           # 16 prompts x 32 tokens, 1 round
    python benchmarks/bench_generation.py --prompts 64 --new-tokens 48 --batch-sizes 16,32,64 --parallel 1,8,16
                                                            # ~13 min on 2 loaded cores
    python benchmarks/bench_generation.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64, help="prompts per configuration and round")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads (1: best on a busy CPU)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-sizes", default="16,64", help="hf batch sizes")
    ap.add_argument("--parallel", default="1,8,16", help="llama.cpp concurrent sequences")
    ap.add_argument("--k", type=int, default=8, help="best-of-k case: k samples of prompts/k prompts")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.rounds, args.batch_sizes, args.parallel = 16, 32, 1, "16", "8"

    from mfnb.models import SamplingParams, generate, load_model, load_tokenizer
    from mfnb.models.engines.hf import HFEngine
    from mfnb.models.engines.llamacpp import LlamaCppEngine
    from mfnb.worlds.smol.smollm2 import find_gguf, smollm2_path
    from mfnb.worlds.smol.task import InstructionParams, InstructionSet

    torch.set_num_threads(args.threads)
    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    parallels = [int(p) for p in args.parallel.split(",")]
    configs = ([("transformers generate fp32", "generate", max(batch_sizes))]
               + [(f"ours fp32 batch {b}", "float32", b) for b in batch_sizes]
               + [(f"ours bf16 batch {b}", "bfloat16", b) for b in batch_sizes]
               + [(f"llama.cpp Q4_1 parallel {p}", "llamacpp", p) for p in parallels])
    n_slices = args.rounds * (len(configs) + 2)
    tasks = InstructionSet(InstructionParams(n_train=args.prompts * n_slices, n_validation=0, n_test=0))
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in tasks.prompts["train"]]
    slices = iter(chat[i:i + args.prompts] for i in range(0, len(chat), args.prompts))
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=0.7, top_p=0.9)
    engines = {"float32": HFEngine(model, tokenizer, threads=args.threads),
               "bfloat16": HFEngine(model, tokenizer, dtype="bfloat16", threads=args.threads)}
    llama = {p: LlamaCppEngine(find_gguf(), tokenizer, parallel=p, threads=args.threads,
                               ctx_per_sequence=512 + args.new_tokens) for p in parallels}
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in chat[:256]]
    print(f"SmolLM2-135M-Instruct, {args.prompts} prompts x {args.new_tokens} new tokens per configuration, "
          f"temperature 0.7 top-p 0.9, {args.threads} thread(s), prompts {statistics.mean(prompt_tokens):.0f} "
          f"tokens on average (system prompt included), load average {os.getloadavg()[0]:.1f} at start")

    def run(kind: str, size: int, prompts: list[str], seed: int) -> tuple[int, float]:
        sp = sampling.model_copy(update={"batch_size": size})
        if kind == "generate":
            start = time.perf_counter()
            texts = generate(model, tokenizer, prompts, sp, seed=seed, show_progress=False)
            seconds = time.perf_counter() - start
            # generate pads finished rows: count each row's tokens up to its stop token (included)
            tokens = sum(min(args.new_tokens, len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1)
                         for t in texts)
            return tokens, seconds
        engine = llama[size] if kind == "llamacpp" else engines[kind]
        out = engine.generate(prompts, sp, seed=seed)
        return out.tokens, out.seconds

    rates: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for r in range(args.rounds):
        this_round = {}
        for name, kind, size in configs:
            tokens, seconds = run(kind, size, next(slices), seed=r)
            this_round[name] = tokens / seconds
            rates[name].append(tokens / seconds)
            print(f"  round {r + 1}  {name:32s} {tokens:6d} tokens {seconds:7.1f} s  {tokens / seconds:7.1f} tok/s  "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
        best_llama = max(v for k, v in this_round.items() if k.startswith("llama.cpp"))
        for name, value in this_round.items():
            ratios[name].append(value / best_llama)

    print("\nmedian over rounds                      tok/s   ratio to the round's best llama.cpp")
    for name, _, _ in configs:
        print(f"  {name:36s} {statistics.median(rates[name]):7.1f}   {statistics.median(ratios[name]):5.2f}x")
    ours = max((n for n, k, _ in configs if k in ("float32", "bfloat16")), key=lambda n: statistics.median(ratios[n]))
    ours32 = max((n for n, k, _ in configs if k == "float32"), key=lambda n: statistics.median(ratios[n]))
    print(f"\nbest of ours: {ours}: {statistics.median(ratios[ours]):.2f}x llama.cpp's best "
          f"(fp32: {ours32}, {statistics.median(ratios[ours32]):.2f}x); transformers generate "
          f"{statistics.median(ratios[configs[0][0]]):.2f}x")

    # best-of-k: prompts/k distinct prompts, k samples each
    k = args.k
    distinct = next(slices)[: max(1, args.prompts // k)]
    repeated = [p for p in distinct for _ in range(k)]
    kind_ours = dict((n, k_) for n, k_, _ in configs)[ours]
    size_ours = dict((n, s) for n, _, s in configs)[ours]
    best_par = max(parallels, key=lambda p: statistics.median(ratios[f"llama.cpp Q4_1 parallel {p}"]))
    t_ours = run(kind_ours, size_ours, repeated, seed=99)
    t_llama = run("llamacpp", best_par, repeated, seed=99)
    print(f"\nbest-of-{k} ({len(distinct)} prompts x {k} samples): {ours} {t_ours[0] / t_ours[1]:.1f} tok/s, "
          f"llama.cpp parallel {best_par} {t_llama[0] / t_llama[1]:.1f} tok/s: "
          f"ratio {(t_ours[0] / t_ours[1]) / (t_llama[0] / t_llama[1]):.2f}x")
    for engine in llama.values():
        engine.close()


if __name__ == "__main__":
    main()
