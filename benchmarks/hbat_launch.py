"""An HbAT stage under accelerate launch equals the same stage in one process (CPU, gloo).

One SFT and one DPO stage of a tiny full-fine-tuned model with one frozen tensor (HbAT-Freeze) and a strong
EWC penalty on three others, trained in this process and through ``launch`` (2 processes, the same global
batch): prints each stage's update norm, the 2-process result's distance from it relative to that norm,
whether the frozen tensor moved, and the seconds of each (the launch pays process start-up and loading).

    python benchmarks/hbat_launch.py [--config ddp|deepspeed_zero2] [--processes 2]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="ddp", help="ddp or deepspeed_zero2 (ZeRO-3 refuses the EWC penalty)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--lam", type=float, default=1e3, help="the EWC coefficient of the three penalised tensors")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hbat-launch-"))
    os.environ.setdefault("MFNB_CACHE", str(root / "cache"))
    import torch

    from mfnb.hbat.algorithm import _train_stage
    from mfnb.hbat.config import HbatParams
    from mfnb.hbat.ewc import EWCPenalty
    from mfnb.models import load_model, load_tokenizer
    from mfnb.worlds.tiny import task as tasks
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, _new_model

    tokenizer = build_tokenizer()
    _new_model(TinyWorldParams(), tokenizer).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    rng = random.Random(0)
    examples = [tasks.sample_example(rng, min_words=3, max_words=5) for _ in range(16)]
    pref = [{"prompt": e.prompt, "chosen": " " + e.answer(), "rejected": " " + e.answer(habit=True)} for e in examples]
    rows = {"sft": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in pref], "dpo": pref}
    params = HbatParams.model_validate({
        "sft": {"lr": 5e-2, "batch_size": 8, "epochs": 2.0, "max_length": 64},
        "dpo": {"lr": 5e-3, "batch_size": 8, "epochs": 1.0, "max_length": 64, "reference": "previous"}})

    def stage(kind: str, launch):
        model, tok = load_model(root / "base", show_progress=False), load_tokenizer(root / "base")
        named = dict(model.named_parameters())
        frozen, weighted = sorted(named)[0], sorted(named)[1:4]
        named[frozen].requires_grad_(False)
        penalty = EWCPenalty([named[n] for n in weighted], [args.lam] * len(weighted), weighted)
        before = {n: p.detach().clone() for n, p in named.items()}
        start = time.perf_counter()
        metrics = _train_stage(model, tok, kind, rows[kind], params, 3, penalty, False, launch)
        seconds = time.perf_counter() - start
        after = dict(model.named_parameters())
        update = torch.cat([(after[n].detach() - before[n]).flatten() for n in before])
        return update, (after[frozen].detach() - before[frozen]).norm().item(), metrics, seconds

    launch = {"processes": args.processes, "config": args.config}
    print(f"HbAT stage, 1 process vs {args.processes} processes ({args.config}, gloo on CPU), same global batch 8")
    for kind in ("sft", "dpo"):
        here, frozen_here, _, t_here = stage(kind, None)
        there, frozen_there, metrics, t_there = stage(kind, launch)
        print(f"{kind}: world size {metrics.get('world_size')}, update norm {here.norm():.4g}, "
              f"|2-proc - 1-proc| / update norm {(here - there).norm() / here.norm():.2e}, frozen tensor moved "
              f"{frozen_here:g} / {frozen_there:g}, seconds {t_here:.1f} / {t_there:.1f}")


if __name__ == "__main__":
    main()
