"""How well an LLM judge behind a real OpenAI-compatible server reads and agrees, per judge mode.

Starts llama.cpp (xllamacpp) serving SmolLM2-135M-Instruct's GGUF on 127.0.0.1, samples two responses per
verifiable-instruction prompt from the same server (mfnb.worlds.smol.task: IFEval's checkers give each
response a known quality), keeps the pairs whose quality differs, and asks the judge about each pair in both
orders with the papers' prompt, parsing the text (``verdict: text``) and reading the first answer token's
log-probabilities (``verdict: logprobs``). Prints the parse rates, the share of pairs with a verdict,
position consistency and the agreement with the checker (exact 95% interval), from one run.

    python benchmarks/judge_server.py [--pairs 32] [--out results/judge_server.csv]
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32, help="pairs wanted (whose checker scores differ)")
    parser.add_argument("--max-tokens", type=int, default=64, help="response length")
    parser.add_argument("--judge-max-tokens", type=int, default=48, help="text-mode judge answer length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the table as CSV here")
    args = parser.parse_args()

    import openai

    from mfnb.judges import OpenAIJudge
    from mfnb.ladder.agreement import judge_agreement
    from mfnb.models.engines.llamacpp import LlamaCppServer
    from mfnb.worlds.smol import task as ins
    from mfnb.worlds.smol.smollm2 import find_gguf

    os.environ.setdefault("MFNB_BENCH_JUDGE_KEY", "sk-local-llama-cpp-needs-no-key-000000")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    server = LlamaCppServer(find_gguf(), parallel=4, threads=args.threads, ctx_per_sequence=1024, port=port)
    url = f"http://127.0.0.1:{port}/v1"
    print(f"server up in {time.perf_counter() - start:.1f} s at {url}")
    client = openai.OpenAI(api_key=os.environ["MFNB_BENCH_JUDGE_KEY"], base_url=url, max_retries=2)
    ids = [i for i in ins.DEFAULT_IDS if i not in ins.NEVER_FOLLOWED_BY_SMOLLM2]
    tasks = ins.generate_tasks(4 * args.pairs, f"judge-bench-{args.seed}", ids, max_constraints=2)
    rng = random.Random(args.seed)

    def sample(prompt: str, seed: int) -> str:
        r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                           max_tokens=args.max_tokens, temperature=1.0, seed=seed)
        return (r.choices[0].message.content or "").strip()

    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    prompts, first, second = [], [], []
    by_prompt = {t.prompt: t for t in tasks}
    with ThreadPoolExecutor(4) as pool:
        for chunk in range(0, len(tasks), 16):
            part = tasks[chunk:chunk + 16]
            answers = list(pool.map(lambda t: (sample(t.prompt, rng.randrange(2**31)), sample(t.prompt, rng.randrange(2**31))),
                                    part))
            for task, (a, b) in zip(part, answers):
                qa, qb = ins.check(task, a).strict, ins.check(task, b).strict
                if qa != qb and len(prompts) < args.pairs:
                    prompts.append(task.prompt)
                    first.append(a)
                    second.append(b)
            if len(prompts) >= args.pairs:
                break
    print(f"{len(prompts)} pairs with different checker scores, sampled in {time.perf_counter() - start:.0f} s")

    common = dict(model="smollm2", base_url=url, api_key_env="MFNB_BENCH_JUDGE_KEY", prompt_template="dpo",
                  temperature=0.0, concurrency=4, max_wait_s=300.0, progress=False)
    judges = {"text (papers' prompt, parsed)": OpenAIJudge(**common, verdict="text", max_tokens=args.judge_max_tokens),
              "logprobs (letter-first prompt)": OpenAIJudge(**common, verdict="logprobs", top_logprobs=20)}
    quality = lambda p, r: ins.check(by_prompt[p], r).strict
    start = time.perf_counter()
    table, details = judge_agreement(judges, prompts, first, second, quality)
    print(f"judged in {time.perf_counter() - start:.0f} s (2 requests per pair and mode)")
    import pandas as pd

    pd.set_option("display.width", 200)
    cols = ["judge", "pairs", "parse_rate", "read_from_logprobs", "read_from_text", "verdict_rate",
            "position_consistent", "agreement_n", "agreement", "agreement_low", "agreement_high",
            "prob_agreement_n", "prob_agreement", "prompt_tokens", "completion_tokens"]
    print(table[cols].round(3).to_string(index=False))
    text_rows = details["text (papers' prompt, parsed)"]
    print("a text-mode answer:", repr((text_rows[0]["text_ab"] or "")[:160]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    server.close()


if __name__ == "__main__":
    main()
