"""Small stand-ins for the paper profile's hub models and datasets, written in exactly the hub's layouts.

Models: a tiny Llama (byte-level BPE tokenizer trained here) written into a private Hugging Face hub cache
under the papers' hub names (``models--lmsys--vicuna-7b-v1.5/snapshots/<commit>/``, ``refs/main``), so that
the paper world loads them *by hub name* with ``HF_HUB_OFFLINE=1``, exactly as it would from a cache filled
by ``hf download``. Datasets: rm-static, UltraFeedback binarized, AlpacaEval and AlpacaFarm as small local
folders in each repository's file layout and schema (the params' ``path`` points at them).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"
ZEPHYR_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
TOPICS = ["rain", "cats", "bread", "music", "rivers", "chess", "stars", "gardens", "coffee", "trains"]


def corpus() -> list[str]:
    words = " ".join(TOPICS) + " question answer good bad human assistant summary post response instruction"
    return [words, "Below is an instruction that describes a task. ### Instruction: ### Response:",
            "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:"]


def tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus(), trainer)
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", core.token_to_id("<s>"))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat_template:
        tok.chat_template = chat_template
    return tok


def save_llama(folder: Path, *, chat_template: str | None, seed: int, classifier: bool = False) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = tokenizer(chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         num_labels=1)
    model = (LlamaForSequenceClassification if classifier else LlamaForCausalLM)(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def hub_cache_entry(cache: Path, name: str, source: Path) -> Path:
    """Copy ``source``'s files into the hub cache under ``name`` (refs/main -> snapshots/<commit>/)."""
    import shutil

    root = cache / f"models--{name.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        shutil.copy(file, snapshot / file.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def _parquet(folder: Path, split: str, rows: list[dict]) -> None:
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def _json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def hh(i: int) -> str:
    return f"\n\nHuman: tell me about {TOPICS[i % 10]} {i}?\n\nAssistant: sure.\n\nHuman: more {i}?\n\nAssistant:"


def rm_static(folder: Path, n_train: int = 24, n_test: int = 16) -> Path:
    """Dahoas/rm-static: data/{train,test}-*.parquet with prompt, response, chosen, rejected."""
    row = lambda i: {"prompt": hh(i), "response": f" good {i}", "chosen": f" good {i}", "rejected": f" bad {i}"}
    _parquet(folder, "train", [row(i) for i in range(n_train)])
    _parquet(folder, "test", [row(i) for i in range(100, 100 + n_test)])
    return folder


def _messages(prompt: str, answer: str) -> list[dict]:
    return [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]


def ultrafeedback(folder: Path, n_train: int = 20, n_dev: int = 6) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized: data/<split>-*.parquet named by the README's configs."""
    splits = {"train_prefs": n_train, "test_prefs": n_dev, "train_sft": 2, "test_sft": 2, "train_gen": 2, "test_gen": 2}
    for split, n in splits.items():
        _parquet(folder, split, [{"prompt": f"{split} question {i} about {TOPICS[i % 10]}", "prompt_id": str(i),
                                  "chosen": _messages(f"{split} q{i}", f"good answer {i}"),
                                  "rejected": _messages(f"{split} q{i}", f"bad answer {i}"),
                                  "messages": _messages(f"{split} q{i}", f"good answer {i}"),
                                  "score_chosen": 8.0, "score_rejected": 3.5} for i in range(n)])
    config = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{config}\n---\n")
    return folder


def alpaca_eval(folder: Path, n: int = 8) -> Path:
    """tatsu-lab/alpaca_eval's files (a script repository, read from its JSON)."""
    rows = [{"instruction": f"explain {TOPICS[i % 10]} {i}", "output": f"davinci {i}", "generator": "text_davinci_003",
             "dataset": "helpful_base"} for i in range(n)]
    _json(folder / "alpaca_eval.json", rows)
    _json(folder / "alpaca_eval_gpt4_baseline.json", [{**r, "output": f"gpt4 answer {i}", "generator": "gpt4_1106_preview"}
                                                      for i, r in enumerate(rows)])
    return folder


def alpaca_farm(folder: Path, n_sft: int = 12, n_pref: int = 12, n_eval: int = 10) -> Path:
    """tatsu-lab/alpaca_farm's files (a script repository, read from its JSON)."""
    row = lambda i, kind: {"instruction": f"{kind} {TOPICS[i % 10]} {i}", "input": "" if i % 2 else f"with {i}",
                           "output": f"done {kind} {i}"}
    for split, n in {"sft": n_sft, "preference": n_pref, "unlabeled": 2, "val": 2}.items():
        _json(folder / "alpaca_instructions" / f"{split}.json", [row(i, split) for i in range(n)])
    _json(folder / "alpaca_human_preference.json",
          [{"instruction": f"preference {TOPICS[i % 10]} {i}", "input": "" if i % 2 else f"with {i}",
            "output_1": f"one {i}", "output_2": f"two {i}", "preference": 1 + i % 2} for i in range(n_pref)])
    _json(folder / "alpaca_farm_evaluation.json",
          [{**row(i, "eval"), "generator": "text-davinci-003", "dataset": "selfinstruct", "datasplit": "eval"}
           for i in range(n_eval)])
    return folder


def paper_world_spec(notebook: str, root: Path, **sources: str) -> dict:
    """``world`` of ``params/paper/<notebook>.yaml`` with its dataset paths pointed at local folders."""
    values = yaml.safe_load((root / "params" / "paper" / f"{notebook}.yaml").read_text())
    world = json.loads(json.dumps(values["world"]))
    for key, path in sources.items():  # e.g. source=..., alpaca_eval=..., instructions=...
        world["data"][key] = {**world["data"].get(key, {}), "path": path}
    return world
