"""The `paper` profile's heavy steps at 7B scale on one GPU: time and peak memory, one table.

A stand-in with Llama-2-7B's shapes (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocabulary 32,000;
6.74B parameters, 13.5 GB in bf16) and RANDOM weights, built directly on the device (no checkpoint can travel to
a GPU machine), and a word-level tokenizer over a synthetic 32,000-word vocabulary built offline. Through the
project's own code:

  dpo         one LoRA DPO optimizer step at params/paper/02_multifidelity_traces.yaml's settings (LoRA r 16,
              alpha 32, all-linear; per-device batch 8, grad_accum 8, i.e. 64 pairs; max_length 1024 made of a
              768-token prompt and 256-token responses), by ``mfnb.models.attach_lora`` and
              ``mfnb.training.dpo.dpo_update``; without activation checkpointing (the project's setting) and with it
              (``DPOParams.gradient_checkpointing`` where it exists, else TRL's DPOConfig through
              ``dpo_update(config_overrides={"activation_checkpointing": True})``; the note says which).
              An out-of-memory error is a figure here, not a crash: it is reported and the run goes on.
  importance  HbAT's importance statistics over a full fine-tune's tensors (every parameter):
              ``mfnb.hbat.importance.snapshot`` (on the CPU where it takes ``device``), the parameters perturbed
              in place, then ``squared_change_sums(before, after)`` and the importances from them.
  sample      one batch of the paper's training sampling (64 prompts of 256 tokens, 256 new tokens, temperature
              0.1, top-p 0.9) through our decode loop, ``mfnb.models.engines.hf.HFEngine``.

Each row: wall seconds (with ``torch.cuda.synchronize``), tokens and tokens/s where they apply, the peak GPU
memory allocated and reserved, and the error's last lines where a part failed (the other parts still run).

    python3 benchmarks/gpu_scale.py                         # on a GPU machine, well inside 10 minutes on an H100
    python3 benchmarks/gpu_scale.py --parts dpo --checkpointing on --grad-accum 1
    python benchmarks/gpu_scale.py --shape tiny --device cpu   # a 2-layer model: the code path on CPU (tests)

With ``--out DIR`` (default: ``$OUT`` when set) the table is also written as gpu_scale.csv and gpu_scale.json,
rewritten after every row. At the 7b shape, the measured rates the cost estimate uses (``python -m mfnb estimate
--profile paper``: sampling from the ``sample`` row, LoRA training from the fastest ``dpo`` row) are recorded at
the end with the date and the card (``mfnb.estimate.throughput.record``, replacing this benchmark's earlier rows)
in ``--throughputs`` (default benchmarks/throughput.csv) and, with ``--out``, in ``DIR/throughput.csv`` too (a lent
GPU machine's tree is not kept: copy that file to benchmarks/throughput.csv here). Exit status 1 if a row failed (an out-of-memory error counts as a failure except
for the DPO step without activation checkpointing, where it is the expected figure on an 80 GB card).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import gc
import inspect
import json
import os
import platform
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the hub, and a GPU machine has no network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import yaml  # noqa: E402

PAPER_PARAMS = ROOT / "params" / "paper" / "02_multifidelity_traces.yaml"
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]

# Llama-2-7B's shapes; "tiny" is a 2-layer model for CPU tests
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512, max_position_embeddings=256),
}
# lengths and counts: "7b" takes the paper's from PAPER_PARAMS (None below), "tiny" its own small ones
SIZES = {
    "7b": dict(max_length=None, response=None, dpo_batch=None, grad_accum=None, n_prompts=None,
               sample_prompt=256, new_tokens=None),
    "tiny": dict(max_length=64, response=16, dpo_batch=2, grad_accum=2, n_prompts=8, sample_prompt=16,
                 new_tokens=16),
}
PARTS = ("dpo", "importance", "sample")
GIB = 2**30
PERTURB = 1e-3  # std of the noise added to every parameter: the expected squared change per element is 1e-6


@dataclasses.dataclass
class Row:
    part: str
    variant: str
    status: str = "ok"  # ok | oom | error | skipped | interrupted
    seconds: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    peak_alloc_gib: float | None = None
    peak_reserved_gib: float | None = None
    note: str = ""
    error: str = ""
    oom_expected: bool = False  # an OOM here is a figure, not a failure

    @property
    def failed(self) -> bool:
        return self.status in ("error", "interrupted") or (self.status == "oom" and not self.oom_expected)


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if self.cuda else torch.float32)
        self.rows: list[Row] = []
        self.started = time.perf_counter()
        self.t0 = self.started
        self.out = Path(args.out) if args.out else None
        self.meta: dict = {}
        self.model = None
        self.tokenizer = None
        self.paper = yaml.safe_load(PAPER_PARAMS.read_text())
        sizes = dict(SIZES[args.shape])
        paper_dpo, sampling = self.paper["dpo"], self.paper["sampling"]
        fill = dict(max_length=paper_dpo["max_length"], response=sampling["max_new_tokens"],
                    dpo_batch=paper_dpo["batch_size"], grad_accum=paper_dpo["grad_accum"],
                    n_prompts=sampling["batch_size"], new_tokens=sampling["max_new_tokens"])
        self.sizes = {k: (fill[k] if v is None else v) for k, v in sizes.items()}
        if args.grad_accum:
            self.sizes["grad_accum"] = args.grad_accum

    # -- timing and memory ------------------------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start(self):
        """(Re)start the clock and the peak-memory counters of the row being measured."""
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.t0 = time.perf_counter()

    def free(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def measure(self, part: str, variant: str, fn, *, oom_expected: bool = False) -> Row:
        row = Row(part, variant, oom_expected=oom_expected)
        if self.args.budget_s and self.elapsed() > self.args.budget_s:
            row.status, row.note = "skipped", f"time budget of {self.args.budget_s:.0f} s spent"
            return self.add(row)
        self.free()
        self.start()
        try:
            result = fn() or {}
            self.sync()
            row.tokens = result.get("tokens")
            row.note = result.get("note", "")
        except KeyboardInterrupt:  # SIGTERM from `timeout` too (see main): keep the row, then stop
            row.status, row.seconds = "interrupted", time.perf_counter() - self.t0
            self.add(row)
            raise
        except Exception as err:  # a part's failure is a result: report it, free its memory, go on
            row.status = "oom" if _is_oom(err) else "error"
            lines = "".join(traceback.format_exception(err)).rstrip().splitlines()
            row.error = "\n".join(lines[-8:])
            print(f"!! {part}/{variant} failed ({row.status}); the traceback's last lines:", flush=True)
            print("\n".join("   " + line for line in lines[-8:]), flush=True)
            traceback.clear_frames(err.__traceback__)
            del err
            try:
                self.sync()
            except Exception:  # a broken CUDA context: later parts will say so too
                pass
        row.seconds = time.perf_counter() - self.t0
        if row.tokens and row.seconds and row.status == "ok":
            row.tokens_per_s = row.tokens / row.seconds
        if self.cuda:
            try:
                row.peak_alloc_gib = torch.cuda.max_memory_allocated(self.device) / GIB
                row.peak_reserved_gib = torch.cuda.max_memory_reserved(self.device) / GIB
            except Exception:
                pass
        self.free()
        return self.add(row)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"-- {row.part}/{row.variant}: {row.status}, {_fmt(row.seconds, '.1f')} s"
              + (f", {row.tokens_per_s:,.0f} tokens/s" if row.tokens_per_s else "")
              + (f", peak {row.peak_alloc_gib:.1f} GiB allocated / {row.peak_reserved_gib:.1f} reserved"
                 if row.peak_alloc_gib is not None else "")
              + (f"; {row.note}" if row.note else ""), flush=True)
        self.write()
        return row

    # -- the stand-in -----------------------------------------------------------------------------------------
    def build(self):
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

        shape = SHAPES[self.args.shape]
        vocab = {tok: i for i, tok in enumerate(SPECIAL)}
        vocab.update({f"w{i}": i for i in range(len(SPECIAL), shape["vocab_size"])})
        core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # decoding joins the words with spaces
        self.tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                                 eos_token="</s>", pad_token="<pad>", padding_side="left")
        config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=3, tie_word_embeddings=False,
                             rms_norm_eps=1e-5)
        torch.manual_seed(0)
        with torch.device(self.device):  # random weights made where they live: never a CPU copy first
            model = AutoModelForCausalLM.from_config(config, dtype=self.dtype)
        self.model = model.eval()
        n = sum(p.numel() for p in model.parameters())
        self.meta["parameters"] = n
        self.meta["attention"] = model.config._attn_implementation
        return {"note": f"{_count(n)} parameters ({n * model.dtype.itemsize / 1e9:.2f} GB in "
                        f"{str(model.dtype).removeprefix('torch.')}), attention {model.config._attn_implementation}"}

    def words(self, generator, n: int) -> str:
        ids = torch.randint(len(SPECIAL), self.tokenizer.vocab_size, (n,), generator=generator)
        return " ".join(f"w{i}" for i in ids.tolist())

    # -- (1) one LoRA DPO optimizer step ----------------------------------------------------------------------
    def dpo(self):
        from mfnb.models import LoraParams, attach_lora
        from mfnb.training.config import DPOParams
        from mfnb.training.dpo import dpo_update, preference_dataset

        s = self.sizes
        response_words = s["response"] - 1  # TRL appends the EOS token to each response
        prompt_words = s["max_length"] - s["response"]
        pairs = s["dpo_batch"] * s["grad_accum"]
        g = torch.Generator().manual_seed(0)
        prompts = [self.words(g, prompt_words) for _ in range(pairs)]
        chosen = [self.words(g, response_words) for _ in range(pairs)]
        rejected = [self.words(g, response_words) for _ in range(pairs)]
        lengths = {len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts}
        assert lengths == {prompt_words}, f"prompt token counts {sorted(lengths)[:5]}, expected {prompt_words}"
        tokens = 2 * pairs * (prompt_words + s["response"])  # chosen and rejected sequences, each prompt + response
        paper = dict(self.paper["dpo"], batch_size=s["dpo_batch"], grad_accum=s["grad_accum"],
                     max_length=s["max_length"])
        params = DPOParams(**paper)
        lora = LoraParams(**self.paper["lora"])
        # the project's own knob where DPOParams has one, else straight into TRL's DPOConfig
        knob = "gradient_checkpointing" if "gradient_checkpointing" in DPOParams.model_fields else None
        how = f"DPOParams.{knob}" if knob else "config_overrides"
        policy = attach_lora(self.model, lora)
        trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        warmed = False
        try:
            for variant in self.args.checkpointing:
                on = variant == "on"
                step_params = params.model_copy(update={knob: on}) if knob else params
                overrides = None if knob else {"activation_checkpointing": on}

                def step():
                    nonlocal warmed
                    warm_note = ""
                    if not warmed:  # the first call pays for CUDA/cuBLAS start-up and the trainer's imports
                        one = preference_dataset(prompts[:s["dpo_batch"]], chosen[:s["dpo_batch"]],
                                                 rejected[:s["dpo_batch"]])
                        t = time.perf_counter()
                        dpo_update(policy, self.tokenizer, one, step_params.model_copy(update={"grad_accum": 1}),
                                   seed=0, config_overrides=overrides)
                        self.sync()
                        warm_note = f"; warm-up call (1 micro-batch, setup included) {time.perf_counter() - t:.1f} s"
                        warmed = True
                        self.start()
                    data = preference_dataset(prompts, chosen, rejected)
                    metrics = dpo_update(policy, self.tokenizer, data, step_params, seed=0,
                                         config_overrides=overrides)
                    steps = metrics.get("train_runtime")
                    return {"tokens": tokens,
                            "note": f"{pairs} pairs = batch {s['dpo_batch']} x grad_accum {s['grad_accum']}, "
                                    f"{prompt_words}+{s['response']} tokens each, LoRA r {lora.r} alpha {lora.alpha} "
                                    f"({_count(trainable)} trainable); activation checkpointing {variant} via {how}; "
                                    f"trainer's train_runtime "
                                    f"{_fmt(steps, '.1f')} s, loss {_fmt(metrics.get('train_loss'), '.4f')}"
                                    + warm_note}

                self.measure("dpo", f"checkpointing {variant}", step, oom_expected=not on)
                for p in policy.parameters():
                    p.grad = None
        finally:
            base = policy.get_base_model()
            for undo in ("disable_input_require_grads", "activation_checkpointing_disable"
                         if hasattr(base, "activation_checkpointing_disable") else "gradient_checkpointing_disable"):
                try:  # what the trainer turned on, off again for sampling
                    getattr(base, undo)()
                except Exception:
                    pass
            self.model = policy.unload().eval()  # the base model without the LoRA layers
            del policy
            self.free()

    # -- (2) HbAT's importance statistics over every parameter -------------------------------------------------
    def importance(self):
        from mfnb.hbat import importance as imp

        model = self.model
        model.requires_grad_(True)  # a full fine-tune: every tensor trains
        try:
            tensors = imp.trainable_tensors(model)
            n_elements = sum(t.numel() for t in tensors.values())
            n_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
            kwargs = {"device": "cpu"} if "device" in inspect.signature(imp.snapshot).parameters else {}
            t = time.perf_counter()
            before = imp.snapshot(tensors, **kwargs)
            self.sync()
            t_snapshot = time.perf_counter() - t
            where = next(iter(before.values())).device.type
            torch.manual_seed(0)
            t = time.perf_counter()
            with torch.no_grad():
                for p in tensors.values():
                    p.add_(torch.randn_like(p), alpha=PERTURB)
            self.sync()
            t_perturb = time.perf_counter() - t
            t = time.perf_counter()
            sums = imp.squared_change_sums(before, tensors)
            self.sync()
            t_sums = time.perf_counter() - t
            changes = {k: s / n for k, (s, n) in sums.items()}
            weights = imp.importance_from_changes(changes, fmax=100.0)
            counted = sum(n for _, n in sums.values())
            mean_sq = sum(s for s, _ in sums.values()) / counted
            del before
            if counted != n_elements or len(sums) != len(tensors):
                raise AssertionError(f"squared_change_sums covered {counted} of {n_elements} elements, "
                                     f"{len(sums)} of {len(tensors)} tensors")
            if not 0.5 * PERTURB**2 < mean_sq < 2 * PERTURB**2:
                raise AssertionError(f"mean squared change {mean_sq:.3g}, expected about {PERTURB**2:.3g}")
            if abs(sum(weights.values()) - 100.0) > 1e-6:
                raise AssertionError(f"importances sum to {sum(weights.values())}, not fmax = 100")
            host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
            return {"note": f"{len(tensors)} tensors, {_count(n_elements)} elements ({n_bytes / 1e9:.2f} GB); "
                            f"snapshot({'device=cpu' if kwargs else 'no device argument'}) on {where} "
                            f"{t_snapshot:.1f} s ({n_bytes / 1e9 / max(t_snapshot, 1e-9):.1f} GB/s), perturb "
                            f"{t_perturb:.1f} s (excluded), squared_change_sums {t_sums:.1f} s; mean squared change "
                            f"{mean_sq:.3g} (expected {PERTURB**2:.0e}); host peak RSS {host:.1f} GiB"}
        finally:
            model.requires_grad_(False)

    # -- (3) one batch of sampling through our decode loop -----------------------------------------------------
    def sample(self):
        from mfnb.models import SamplingParams
        from mfnb.models.engines.hf import HFEngine

        s = self.sizes
        sampling = SamplingParams(**dict(self.paper["sampling"], max_new_tokens=s["new_tokens"],
                                         batch_size=s["n_prompts"]))
        g = torch.Generator().manual_seed(1)
        prompts = [self.words(g, s["sample_prompt"]) for _ in range(s["n_prompts"])]
        engine = HFEngine(self.model, self.tokenizer, dtype="auto")
        t = time.perf_counter()
        engine.generate(prompts[:2], sampling.model_copy(update={"max_new_tokens": 2}), seed=0)  # warm-up
        self.sync()
        warm = time.perf_counter() - t
        self.start()
        gen = engine.generate(prompts, sampling, seed=0)
        self.sync()
        steps = max(gen.new_tokens) if gen.new_tokens else 0
        return {"tokens": gen.tokens,
                "note": f"{len(prompts)} prompts x {s['sample_prompt']} tokens, up to {sampling.max_new_tokens} new "
                        f"(temperature {sampling.temperature}, top_p {sampling.top_p}, top_k {sampling.top_k}), "
                        f"batch {sampling.batch_size}, engine dtype {engine.dtype}; {gen.tokens} tokens in "
                        f"{steps} steps ({1000 * gen.seconds / max(steps, 1):.1f} ms a step); warm-up {warm:.1f} s"}

    # -- output -----------------------------------------------------------------------------------------------
    def describe(self):
        import accelerate
        import peft
        import transformers
        import trl

        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if self.cuda else None,
                "transformers": transformers.__version__, "trl": trl.__version__, "peft": peft.__version__,
                "accelerate": accelerate.__version__, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "shape": self.args.shape,
                "sizes": self.sizes, "paper_params": str(PAPER_PARAMS.relative_to(ROOT))}
        if self.cuda:
            props = torch.cuda.get_device_properties(self.device)
            meta.update(card=props.name, card_memory_gib=round(props.total_memory / GIB, 1),
                        capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
        else:
            meta.update(card="none (CPU)", cpu_threads=torch.get_num_threads())
        self.meta.update(meta)
        print(f"# gpu_scale {meta['date']}: {meta.get('card')}"
              + (f" ({meta['card_memory_gib']} GiB, sm {meta['capability']})" if self.cuda else "")
              + f"; torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}; python {meta['python']}; "
              f"transformers {meta['transformers']}, trl {meta['trl']}, peft {meta['peft']}, "
              f"accelerate {meta['accelerate']}", flush=True)
        print(f"# shape {self.args.shape} ({SHAPES[self.args.shape]}), {meta['dtype']} on {self.device}; "
              f"sizes {self.sizes} (from {meta['paper_params']} where the shape is 7b)", flush=True)

    def write(self):
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        fields = [f.name for f in dataclasses.fields(Row) if f.name != "oom_expected"]
        tmp = self.out / "gpu_scale.csv.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: (round(v, 3) if isinstance(v, float) else v)
                                 for k, v in dataclasses.asdict(row).items() if k in fields})
        os.replace(tmp, self.out / "gpu_scale.csv")
        tmp = self.out / "gpu_scale.json.tmp"
        tmp.write_text(json.dumps({"meta": self.meta, "rows": [dataclasses.asdict(r) for r in self.rows]}, indent=1))
        os.replace(tmp, self.out / "gpu_scale.json")

    def table(self) -> str:
        head = ["part", "variant", "status", "seconds", "tokens", "tokens/s", "peak alloc GiB", "peak reserved GiB"]
        body = [[r.part, r.variant, r.status, _fmt(r.seconds, ".1f"), _fmt(r.tokens, ","), _fmt(r.tokens_per_s, ",.0f"),
                 _fmt(r.peak_alloc_gib, ".1f"), _fmt(r.peak_reserved_gib, ".1f")] for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).rjust(w) if i >= 3 else str(c).ljust(w)
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        out = [line(head)] + [line(b) for b in body]
        out.append("notes:")
        out += [f"  {r.part}/{r.variant}: {r.note or '-'}" + (f"\n    error: {r.error.splitlines()[-1]}" if r.error else "")
                for r in self.rows]
        return "\n".join(out)


def measured_rates(bench) -> list:
    """The rates the cost estimate reads (``mfnb.estimate.throughput.Measured``) from the rows that ran: sampling
    from the ``sample`` row, LoRA training from the fastest ``dpo`` row; none but at the 7b shape (the paper's)."""
    from mfnb.estimate.throughput import Measured

    if bench.args.shape != "7b":
        return []
    s, dtype, out = bench.sizes, str(bench.dtype).removeprefix("torch."), []
    shape = f"Llama-2-7B shapes with random weights, {dtype}"
    sample = [r for r in bench.rows if r.part == "sample" and r.status == "ok" and r.tokens_per_s]
    if sample:
        out.append(Measured("sampling", sample[-1].tokens_per_s, "gpu_scale.py",
                            f"{shape}, our decode loop (HFEngine), {s['n_prompts']} prompts x {s['sample_prompt']} "
                            f"tokens, up to {s['new_tokens']} new", variant="sample", profile="paper", engine="hf"))
    dpo = [r for r in bench.rows if r.part == "dpo" and r.status == "ok" and r.tokens_per_s]
    if dpo:
        best = max(dpo, key=lambda r: r.tokens_per_s)
        out.append(Measured("training", best.tokens_per_s, "gpu_scale.py",
                            f"{shape}, one LoRA DPO optimizer step ({best.variant}), "
                            f"{s['dpo_batch'] * s['grad_accum']} pairs x {s['max_length']} tokens", variant="dpo",
                            profile="paper"))
    return out


def record_throughputs(bench) -> None:
    """The measured rates into ``--throughputs`` and ``<--out>/throughput.csv`` (see the module docstring)."""
    rates = measured_rates(bench)
    if not rates:
        return
    from mfnb.estimate.throughput import machine, record

    where = machine(device=str(bench.device)) if bench.cuda else machine(threads=torch.get_num_threads())
    files = ([] if bench.args.throughputs in ("", "none") else [Path(bench.args.throughputs)]) + \
        ([bench.out / "throughput.csv"] if bench.out else [])
    for file in files:
        try:
            record(rates, file, machine_text=where)
            print(f"# measured rates ({', '.join(r.kind for r in rates)}) recorded in {file}", flush=True)
        except OSError as err:  # the measurements are in the table still
            print(f"!! could not record the rates in {file}: {err}", flush=True)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--checkpointing", default="off,on",
                        help="the DPO step's activation checkpointing variants, in order (default off,on)")
    parser.add_argument("--grad-accum", type=int, default=None,
                        help="micro-batches per DPO optimizer step (default: the paper params' grad_accum)")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the rows that would start after this many seconds (the table is still written)")
    parser.add_argument("--out", default=os.environ.get("OUT") or None,
                        help="folder for gpu_scale.csv and gpu_scale.json (default: $OUT when set)")
    parser.add_argument("--throughputs", default=str(ROOT / "benchmarks" / "throughput.csv"),
                        help="the cost estimate's measured-throughput file the 7b shape's rates are recorded in "
                             "(default benchmarks/throughput.csv; 'none': not recorded)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in args.parts if p not in PARTS]
    if bad:
        parser.error(f"--parts: unknown {bad}; choose from {', '.join(PARTS)}")
    args.checkpointing = [c.strip() for c in args.checkpointing.split(",") if c.strip()]
    if not args.checkpointing or any(c not in ("off", "on") for c in args.checkpointing):
        parser.error("--checkpointing: a comma-separated list of off and on")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); "
                     "use --device cpu --shape tiny")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu" and args.shape == "tiny":
        torch.set_num_threads(1)  # a tiny model runs fastest on one thread
    bench = Bench(args)

    def terminated(signum, frame):  # `timeout` sends SIGTERM: keep the rows measured so far
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    status = 0
    try:
        bench.describe()
        bench.measure("build", "random weights", bench.build)
        if bench.model is None:
            print("!! no model: the other parts cannot run", flush=True)
        else:
            for part in args.parts:
                if part == "dpo":
                    try:
                        bench.dpo()
                    except Exception as err:  # before or after the measured steps (LoRA, data, unloading)
                        bench.add(Row("dpo", "setup", "error", error="".join(
                            traceback.format_exception(err)).rstrip().splitlines()[-1]))
                        traceback.print_exception(err)
                else:
                    bench.measure(part, {"importance": "full fine-tune", "sample": "hf engine"}[part],
                                  getattr(bench, part))
    except KeyboardInterrupt as err:
        print(f"!! interrupted ({err}) after {bench.elapsed():.0f} s: the table holds the rows measured so far",
              flush=True)
        status = 130
    bench.meta["total_seconds"] = round(bench.elapsed(), 1)
    bench.write()
    record_throughputs(bench)
    print()
    print(bench.table())
    failed = [f"{r.part}/{r.variant} ({r.status})" for r in bench.rows if r.failed]
    if bench.model is None:
        failed.append("build")
    print(f"gpu_scale: {len(bench.rows)} rows in {bench.elapsed():.0f} s; "
          + ("INTERRUPTED; " if status else "")
          + (f"FAILED: {', '.join(failed)}" if failed else "no failures")
          + (f"; written to {bench.out}" if bench.out else ""), flush=True)
    return status or (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
