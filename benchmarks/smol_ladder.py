"""Does a fidelity ladder exist on SmolLM2? Best-of-k under IFEval's checker, measured (not a speed target).

For ``--prompts`` validation prompts of the verifiable-instruction set: ``--k-max`` samples each (stored in
the mfnb cache, so a rerun is instant), then the mean strict / loose quality of best-of-k for k = 1, 2, 4, ...,
of greedy decoding and of a low-temperature sample (the multi-fidelity paper's student sampling: temperature
0.1, top-p 0.9), the oracle win rates between them (checker quality, tie when equal, with exact intervals),
the share of samples cut by ``--new-tokens``, quality had the cap been shorter (samples truncated and
re-scored: the first n tokens of a sample are what a run capped at n draws), and time per prompt.

    python benchmarks/smol_ladder.py                      # 20 prompts, k up to 32, 192 new tokens
    python benchmarks/smol_ladder.py --prompts 8 --k-max 8 --new-tokens 64
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--k-max", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=192)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--ladders", default="1,4,16;2,8,32", help="k of g1,g2,g3; several ladders split by ';'")
    ap.add_argument("--exclude", default="", help="instruction ids left out of the prompts, comma-separated")
    ap.add_argument("--constraints", default="1,3", help="min,max constraints per prompt")
    args = ap.parse_args()

    from mfnb import stats
    from mfnb.judges import OracleJudge
    from mfnb.models import SamplingParams, load_model, load_tokenizer
    from mfnb.models.engines.hf import HFEngine
    from mfnb.worlds.shared.best_of_k import BestOfK
    from mfnb.worlds.smol.smollm2 import smollm2_path
    from mfnb.worlds.smol.task import DEFAULT_IDS, InstructionParams, InstructionSet

    torch.set_num_threads(args.threads)
    folder = smollm2_path()
    tokenizer, model = load_tokenizer(folder), load_model(folder, show_progress=False)
    excluded = [i for i in args.exclude.split(",") if i]
    low, high = map(int, args.constraints.split(","))
    tasks = InstructionSet(InstructionParams(instruction_ids=[i for i in DEFAULT_IDS if i not in excluded],
                                             min_constraints=low, max_constraints=high))
    prompts = tasks.prompts["validation"][: args.prompts]
    engine = HFEngine(model, tokenizer, dtype=args.dtype, threads=args.threads)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=args.top_p,
                              batch_size=64)
    bok = BestOfK(engine, tokenizer, lambda p, r: tuple(tasks.score(p, r)[:2]), sampling, seed=0,
                  model_id=folder.name)
    print(f"SmolLM2-135M-Instruct ({args.dtype}, {args.threads} thread(s)), {len(prompts)} validation prompts, "
          f"{args.k_max} samples each at temperature {args.temperature} top-p {args.top_p}, <= {args.new_tokens} "
          f"new tokens; load average {os.getloadavg()[0]:.1f}; instruction ids left out: {excluded or 'none'}; {low}-{high} constraints per prompt")
    cands = bok.candidates(prompts, args.k_max, show_progress=True)
    responses: dict[str, list[str]] = {}
    for name, temp in (("greedy", 0.0), ("student T=0.1", 0.1)):
        sp = sampling.model_copy(update={"temperature": temp})
        responses[name] = BestOfK(engine, tokenizer, lambda p, r: (0,), sp, seed=1, model_id=folder.name
                                  ).candidates(prompts, 1)
        responses[name] = [c[0].text for c in responses[name]]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.k_max]
    for k in ks:
        responses[f"best-of-{k}"] = [c.text for c in bok.respond(prompts, k)]

    print("\nmean quality (fraction of constraints followed)     strict   loose   all-followed (strict)")
    for name, texts in responses.items():
        m = tasks.mean_scores(prompts, texts)
        print(f"  {name:20s}                               {m['strict']:.3f}   {m['loose']:.3f}   {m['prompt_strict']:.3f}")

    judge = OracleJudge(lambda p, r: tasks.quality(p, r), tie_margin=0.0, name="ifeval-strict", progress=False)

    def wins(a: str, b: str) -> str:
        s = stats.summarize(judge.compare(prompts, responses[a], responses[b], shuffle_order=False))
        low, high = s.interval(0.05, "exact_ties")
        return f"{s.win_freq:.3f} [{low:.2f}, {high:.2f}] (W/T/L {s.wins}/{s.ties}/{s.losses})"

    print("\noracle win rate of the first over the second (ties 1/2; 95% exact interval)")
    pairs = [("best-of-1", "student T=0.1"), ("best-of-1", "greedy"), ("best-of-2", "best-of-1")]
    for ladder in args.ladders.split(";"):
        g = [f"best-of-{k}" for k in map(int, ladder.split(",")) if k <= args.k_max]
        pairs += [(g[0], "student T=0.1"), (g[0], "greedy")] + list(zip(g[1:], g[:-1]))
    for a, b in dict.fromkeys(pairs):
        print(f"  {a:14s} over {b:14s} {wins(a, b)}")

    flat = [c for cs in cands for c in cs]
    cut = sum(c.tokens >= args.new_tokens for c in flat) / len(flat)
    print(f"\nsamples: {len(flat)}, tokens per sample mean {statistics.mean(c.tokens for c in flat):.0f} median "
          f"{statistics.median(c.tokens for c in flat):.0f}; cut at {args.new_tokens} tokens: {cut:.1%}; "
          f"seconds per sample {statistics.mean(c.seconds for c in flat):.2f} "
          f"(best-of-{args.k_max}: {args.k_max * statistics.mean(c.seconds for c in flat):.1f} s per prompt)")
    print("\nhad the cap been shorter (samples truncated to n tokens and re-scored): mean strict quality")
    for cap in [n for n in (64, 96, 128, 160) if n < args.new_tokens]:
        def truncated(text: str) -> str:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            return tokenizer.decode(ids[:cap], skip_special_tokens=True).strip() if len(ids) >= cap else text

        line = []
        for k in ks:
            best = [max(cs[:k], key=lambda c, p=p: (tuple(tasks.score(p, truncated(c.text))[:2]), -c.j))
                    for p, cs in zip(prompts, cands)]
            q = statistics.mean(tasks.quality(p, truncated(c.text)) for p, c in zip(prompts, best))
            line.append(f"bo{k} {q:.3f}")
        print(f"  cap {cap:3d}: " + "  ".join(line))


if __name__ == "__main__":
    main()
