"""ExPO benchmark: streaming extrapolation vs raw reads and its memory bound; LoRA alpha sweep vs full path.

(a) Two random multi-shard checkpoints (weak, strong) of ``--gb`` GB each in a temp dir.  Raw read: every
    shard of both models read fully twice into a reused buffer, the second (page-cache) pass reported; caches
    are not dropped (that needs root), so both sides read from page cache.  ``extrapolate`` then runs in a
    child process that resets its RSS high-water mark (/proc/self/clear_refs) just before the call: peak
    extra memory = VmHWM after - VmRSS before, file pages mapped from the inputs included.  Targets:
    throughput >= 0.5 x raw read, peak extra < 2 x largest shard + 4 x largest tensor + 300 MB.
(b) A random Llama (~5M parameters) with a LoRA adapter: an alpha sweep of 10 values, full path
    (extrapolate + from_pretrained per alpha) vs toggling the adapter scale on one loaded PeftModel.

    python benchmarks/bench_expo.py            # 1 GB per model, about a minute or two on 2 cores
    python benchmarks/bench_expo.py --gb 0.2   # quick
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

MB = 1 << 20
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# ----------------------------------------------------------------------------------------- (a) streaming


def make_pair(root: Path, gb: float, shards: int, dtype: torch.dtype, hidden: int) -> dict:
    """weak/ and strong/ (= weak + small noise), LLM-like tensors: hidden x 2 hidden mats, norms, an int buffer."""
    from safetensors.torch import save_file

    itemsize = torch.tensor([], dtype=dtype).element_size()
    per_shard = gb * 1e9 / shards
    big = (2 * hidden, hidden)  # the largest tensor
    mats = max(1, round(per_shard / (math.prod(big) * itemsize)))
    weight_map, largest_shard = {}, 0
    (root / "weak").mkdir()
    (root / "strong").mkdir()
    gen = torch.Generator().manual_seed(0)
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        weak, strong = {}, {}
        for m in range(mats):
            name = f"model.layers.{s}.mlp_{m}.weight"
            w = torch.randn(big, generator=gen)
            weak[name] = w.to(dtype)
            strong[name] = (w + 0.01 * torch.randn(big, generator=gen)).to(dtype)
            del w
        for name, shape in ((f"model.layers.{s}.norm.weight", (hidden,)), (f"model.layers.{s}.bias", (7, 3))):
            weak[name] = torch.ones(shape, dtype=dtype)
            strong[name] = torch.full(shape, 1.1, dtype=dtype)
        weak[f"model.layers.{s}.positions"] = strong[f"model.layers.{s}.positions"] = torch.arange(hidden)
        for model, sd in (("weak", weak), ("strong", strong)):
            save_file(sd, root / model / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in weak})
        largest_shard = max(largest_shard, (root / "weak" / file).stat().st_size)
        del weak, strong
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    for model in ("weak", "strong"):
        (root / model / "model.safetensors.index.json").write_text(json.dumps(index))
        (root / model / "config.json").write_text(json.dumps({"model_type": "bench", "architectures": ["Bench"]}))
    return {"largest_shard": largest_shard, "largest_tensor": math.prod(big) * itemsize,
            "model_bytes": sum(p.stat().st_size for p in (root / "weak").glob("*.safetensors"))}


def raw_read(files: list[Path], repeat: int) -> float:
    """Seconds to read every file fully into a reused buffer: median of ``repeat`` passes after a first one."""
    buf = memoryview(bytearray(64 * MB))
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        for path in files:
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def raw_write(folder: Path, nbytes: int, repeat: int) -> float:
    """Seconds to write a new ``nbytes`` file in 2 MB pieces (into the page cache; no fsync), median."""
    piece = memoryview(bytearray(2 * MB))
    times = []
    for i in range(repeat):
        os.sync()
        start = time.perf_counter()
        with open(folder / f"raw_write_{i}", "wb") as f:
            for _ in range(nbytes // len(piece)):
                f.write(piece)
        times.append(time.perf_counter() - start)
        (folder / f"raw_write_{i}").unlink()
    return sorted(times)[len(times) // 2]


def child(weak: str, strong: str, out: str, alpha: float, durable: bool) -> None:
    """Runs in its own process: one extrapolate call, its wall time and RSS high-water mark above baseline."""
    from mfnb.expo import extrapolation

    spent = {"read": 0.0, "compute": 0.0, "write": 0.0}

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        return wrapper

    extrapolation._pread_into = timed("read", extrapolation._pread_into)
    extrapolation._combine = timed("compute", extrapolation._combine)
    extrapolation._ShardWriter.write = timed("write", extrapolation._ShardWriter.write)

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = status("VmRSS")
    start = time.perf_counter()
    extrapolation.extrapolate(weak, strong, alpha, out, progress=False, durable=durable)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "rss_before": before, "hwm": status("VmHWM"), "hwm_reset": reset, **spent}))


def run_child(root: Path, alpha: float, durable: bool) -> dict:
    out = root / "out"
    os.sync()  # start each run with no dirty pages pending, so runs do not pay for each other's writeback
    proc = subprocess.run([sys.executable, __file__, "--child", str(root / "weak"), str(root / "strong"), str(out),
                           str(alpha), str(int(durable))], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out)
    return result


def bench_streaming(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_expo_", dir=args.tmp) as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        info = make_pair(root, args.gb, args.shards, DTYPES[args.dtype], args.hidden)
        os.sync()  # flush the generated files now, so their writeback does not run during the timings
        print(f"(a) generated 2 x {info['model_bytes'] / 1e9:.2f} GB {args.dtype} in {args.shards} shards "
              f"({time.perf_counter() - t:.1f} s); largest shard {info['largest_shard'] / MB:.0f} MB, "
              f"largest tensor {info['largest_tensor'] / MB:.0f} MB")
        files = sorted((root / "weak").glob("*.safetensors")) + sorted((root / "strong").glob("*.safetensors"))
        raw = raw_read(files, args.repeat)
        read_bytes = 2 * info["model_bytes"]
        print(f"    load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (timings are noisy when shared)")
        print(f"    raw read of both models' shards (page cache, median of {args.repeat} after a first pass): {raw:.2f} s, "
              f"{read_bytes / raw / 1e9:.2f} GB/s")
        write = raw_write(root, info["model_bytes"], args.repeat)
        print(f"    raw write of one model's bytes to a new file (page cache, median): {write:.2f} s -> I/O floor "
              f"for extrapolate (read both + write one) {raw + write:.2f} s")
        budget = 2 * info["largest_shard"] + 4 * info["largest_tensor"] + 300 * MB
        results = {}
        for durable in (False, True):
            runs = [run_child(root, 0.5, durable) for _ in range(args.repeat)]
            walls = sorted(r["wall"] for r in runs)
            median = walls[len(walls) // 2]
            extra = max(r["hwm"] - r["rss_before"] for r in runs)
            results[durable] = {"wall": median, "throughput_ratio": raw / median, "io_floor_ratio": (raw + write) / median, "peak_extra": extra,
                                "memory_ratio": extra / budget}
            print(f"    extrapolate (durable={durable}, fsync {'on' if durable else 'off'}), {args.repeat} runs: "
                  f"median {median:.2f} s (first {runs[0]['wall']:.2f} s, range {walls[0]:.2f}-{walls[-1]:.2f}), "
                  f"{read_bytes / median / 1e9:.2f} GB/s read -> throughput / raw read = {raw / median:.2f} "
                  f"(target >= 0.5); / (raw read + raw write) = {(raw + write) / median:.2f}")
            print("      time in (median run): " + ", ".join(
                f"{k} {sorted(r[k] for r in runs)[len(runs) // 2]:.2f} s" for k in ("read", "compute", "write")))
            print(f"      peak extra RSS {extra / MB:.0f} MB (child baseline {runs[0]['rss_before'] / MB:.0f} MB, "
                  f"HWM reset: {runs[0]['hwm_reset']}) vs budget {budget / MB:.0f} MB -> ratio {extra / budget:.3f} "
                  f"(target < 1)")
        return results


# ----------------------------------------------------------------------------------------- (b) LoRA sweep


def bench_lora(args) -> dict:
    import peft
    import transformers

    from mfnb.expo import extrapolate, lora_extrapolation

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=256, intermediate_size=688,
                                      num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                      max_position_embeddings=256, tie_word_embeddings=False)
    alphas = [0.1 * i for i in range(1, 11)]
    ids = torch.randint(0, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="bench_expo_lora_", dir=args.tmp) as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        sft = transformers.LlamaForCausalLM(config).eval()
        n_params = sum(p.numel() for p in sft.parameters())
        sft.save_pretrained(root / "sft")
        lora_cfg = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
        model = peft.get_peft_model(sft, lora_cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        model.save_pretrained(root / "adapter")
        merged = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(root / "sft"),
                                                root / "adapter").merge_and_unload()
        merged.save_pretrained(root / "aligned")

        def forward(m) -> torch.Tensor:
            with torch.no_grad():
                return m(input_ids=ids).logits

        forward(merged)  # warm-up: the first forward pays one-off costs
        full_prep = full_eval = 0.0
        full_logits = []
        for alpha in alphas:
            t = time.perf_counter()
            out = extrapolate(root / "sft", root / "aligned", alpha, root / "expo", overwrite=True, progress=False)
            m = transformers.LlamaForCausalLM.from_pretrained(out).eval()
            t1 = time.perf_counter()
            full_logits.append(forward(m))
            full_prep += t1 - t
            full_eval += time.perf_counter() - t1

        t = time.perf_counter()
        peft_model = peft.PeftModel.from_pretrained(transformers.LlamaForCausalLM.from_pretrained(root / "sft"),
                                                    root / "adapter").eval()
        lora_load = time.perf_counter() - t
        lora_prep = lora_eval = 0.0
        worst = 0.0
        for alpha, reference in zip(alphas, full_logits):
            t = time.perf_counter()
            with lora_extrapolation(peft_model, alpha):
                t1 = time.perf_counter()
                logits = forward(peft_model)
                t2 = time.perf_counter()
            lora_prep += (t1 - t) + (time.perf_counter() - t2)
            lora_eval += t2 - t1
            worst = max(worst, (logits - reference).abs().max().item())
    full_total, lora_total = full_prep + full_eval, lora_load + lora_prep + lora_eval
    print(f"(b) LoRA sweep, random Llama {n_params / 1e6:.1f}M params, 10 alphas, eval batch 4 x 64 tokens")
    print(f"    full path: extrapolate + from_pretrained {full_prep:.2f} s, eval {full_eval:.2f} s")
    print(f"    LoRA path: load once {lora_load:.2f} s, scale toggles {lora_prep * 1e3:.2f} ms, eval {lora_eval:.2f} s")
    print(f"    prep time full / LoRA toggles = {full_prep / max(lora_prep, 1e-9):.0f}x; "
          f"end to end (incl. load and eval) full / LoRA = {full_total / lora_total:.1f}x; "
          f"max |logit diff| = {worst:.1e}")
    return {"full_prep": full_prep, "lora_prep": lora_prep, "end_to_end_ratio": full_total / lora_total,
            "max_logit_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.0, help="size of each model (weak, strong) in GB")
    parser.add_argument("--shards", type=int, default=5)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--hidden", type=int, default=4096, help="largest tensor is 2 hidden x hidden")
    parser.add_argument("--repeat", type=int, default=3, help="extrapolate runs per setting (median reported)")
    parser.add_argument("--tmp", default=None, help="parent of the temp dir (default: system temp)")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--skip-stream", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        weak, strong, out, alpha, durable = args.child
        child(weak, strong, out, float(alpha), durable == "1")
        return
    if not args.skip_stream:
        bench_streaming(args)
    if not args.skip_lora:
        bench_lora(args)


if __name__ == "__main__":
    main()
