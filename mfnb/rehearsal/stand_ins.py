"""Stand-ins for the paper profile's hub models and datasets, written in exactly the hub's layouts.

Models: for every hub name the paper params use (:data:`HUB_MODELS`), a small model of the real model's
architecture family (Llama, Mistral, Qwen2, DeBERTa-v2 for a reward model) with the real tokenizer's special
tokens, BOS/EOS/pad conventions, chat template and generation config (e.g. Llama-3's two stop tokens), random
weights and a byte-level BPE vocabulary trained here. Each is written into a hub cache
(``models--<owner>--<name>/snapshots/<commit>/``, ``refs/main``), so that the paper world loads it *by hub
name* with ``HF_HUB_OFFLINE=1``, exactly as from a cache filled by ``hf download``.

Datasets: rm-static, UltraFeedback binarized, AlpacaEval, AlpacaFarm and TL;DR as local folders in each hub
repository's file layout and schema (the params' ``path`` points at them).

Used by ``python -m mfnb rehearse`` (:mod:`mfnb.rehearsal.run`) and by the tests.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOPICS = ["rain", "cats", "bread", "music", "rivers", "chess", "stars", "gardens", "coffee", "trains"]

# The real models' chat templates, reduced to what they render for user/assistant turns (the shipped ones
# also handle tools and system prompts); each keeps its model's quirks: Mistral's strict alternation, Qwen2's
# default system turn, Llama-3's header tokens.
LLAMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                   "{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
MISTRAL_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
                    "{% endif %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
                    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
CHATML_TEMPLATE = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '<|im_start|>system\\n"
                   "You are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + m['role'] + '\\n' + "
                   "m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\\n' }}{% endif %}")
ZEPHYR_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
                   "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


@dataclass(frozen=True)
class Family:
    """What a stand-in copies from the real model: its architecture and its tokenizer's conventions."""

    architecture: str                       # llama | mistral | qwen2 | deberta-v2
    bos: str | None
    eos: str
    pad: str | None = None
    unk: str | None = None
    extra: tuple[str, ...] = ()             # further special tokens
    chat_template: str | None = None
    stop: tuple[str, ...] = ()              # generation_config.eos_token_id (several for Llama-3, Qwen2)
    adds_bos: bool = True                   # the tokenizer puts BOS in front of text
    classifier: bool = False                # a one-logit sequence classifier (a reward model)
    model_options: dict = field(default_factory=dict)


LLAMA2 = Family("llama", bos="<s>", eos="</s>", unk="<unk>")
LLAMA3 = Family("llama", bos="<|begin_of_text|>", eos="<|eot_id|>", extra=("<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>"), chat_template=LLAMA3_TEMPLATE, stop=("<|end_of_text|>", "<|eot_id|>"),
                model_options={"rope_theta": 500000.0})
MISTRAL = Family("mistral", bos="<s>", eos="</s>", unk="<unk>", chat_template=MISTRAL_TEMPLATE)
QWEN2 = Family("qwen2", bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>",),
               chat_template=CHATML_TEMPLATE, stop=("<|im_end|>", "<|endoftext|>"), adds_bos=False)
ZEPHYR = Family("mistral", bos="<s>", eos="</s>", pad="</s>", unk="<unk>", chat_template=ZEPHYR_TEMPLATE)
RM_MISTRAL = Family("mistral", bos="<s>", eos="</s>", pad="</s>", unk="<unk>", chat_template=MISTRAL_TEMPLATE,
                    classifier=True)
DEBERTA_RM = Family("deberta-v2", bos="[CLS]", eos="[SEP]", pad="[PAD]", unk="[UNK]", classifier=True)

# Notebook 03's Table 2 extrapolates an aligned model away from its SFT checkpoint: the aligned stand-ins are
# copies of their family under another object, so that hub_models() builds them with their own random weights
# (a pair of identical stand-ins would make every extrapolation the aligned model itself).
LLAMA2_ALIGNED = replace(LLAMA2)
ZEPHYR_ALIGNED = replace(ZEPHYR)
MISTRAL_ALIGNED = replace(MISTRAL)

#: Every hub model the paper params name (roles and reward models), with the family its stand-in copies.
HUB_MODELS: dict[str, Family] = {
    "lmsys/vicuna-7b-v1.5": LLAMA2,
    "meta-llama/Llama-2-7b-hf": LLAMA2,
    "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA3,
    "mistralai/Mistral-7B-Instruct-v0.2": MISTRAL,
    "Qwen/Qwen2-7B-Instruct": QWEN2,
    "alignment-handbook/zephyr-7b-sft-full": ZEPHYR,
    "weqweasdas/RM-Mistral-7B": RM_MISTRAL,
    "OpenAssistant/reward-model-deberta-v3-large-v2": DEBERTA_RM,
    # notebook 03's Table 2: SFT checkpoints and the models aligned from them
    "allenai/tulu-2-7b": LLAMA2, "allenai/tulu-2-13b": LLAMA2, "allenai/tulu-2-70b": LLAMA2,
    "allenai/tulu-2-dpo-7b": LLAMA2_ALIGNED, "allenai/tulu-2-dpo-13b": LLAMA2_ALIGNED,
    "allenai/tulu-2-dpo-70b": LLAMA2_ALIGNED,
    "HuggingFaceH4/mistral-7b-sft-alpha": ZEPHYR, "HuggingFaceH4/mistral-7b-sft-beta": ZEPHYR,
    "HuggingFaceH4/zephyr-7b-alpha": ZEPHYR_ALIGNED, "HuggingFaceH4/zephyr-7b-beta": ZEPHYR_ALIGNED,
    "alignment-handbook/zephyr-7b-dpo-full": ZEPHYR_ALIGNED,
    "openchat/openchat_3.5": MISTRAL, "openchat/openchat-3.5-0106": MISTRAL,
    "berkeley-nest/Starling-LM-7B-alpha": MISTRAL_ALIGNED, "Nexusflow/Starling-LM-7B-beta": MISTRAL_ALIGNED,
}


def corpus() -> list[str]:
    """Text the stand-in tokenizers learn their merges from: the datasets' words and the templates' scaffolding."""
    words = " ".join(TOPICS) + (" question answer good bad human assistant summary post response instruction "
                                "tell me about more sure explain done with one two davinci gpt4 title subreddit")
    return [words, words.upper(), "Below is an instruction that describes a task. ### Instruction: ### Response:",
            "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
            "SUBREDDIT: r/ TITLE: POST: TL;DR: system user assistant [INST] [/INST] 0123456789 ?!.,:;'\""]


def tokenizer(family: Family, vocab_size: int = 512):
    """A fast BPE tokenizer with the family's special tokens and BOS convention."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in dict.fromkeys([family.pad, family.bos, family.eos, family.unk, *family.extra]) if t]
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(corpus(), trainer)
    if family.bos and family.adds_bos:
        if family.architecture == "deberta-v2":
            core.post_processor = processors.TemplateProcessing(
                single=f"{family.bos} $A {family.eos}",
                special_tokens=[(t, core.token_to_id(t)) for t in (family.bos, family.eos)])
        else:
            core.post_processor = processors.TemplateProcessing(
                single=f"{family.bos} $A", special_tokens=[(family.bos, core.token_to_id(family.bos))])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=family.bos, eos_token=family.eos,
                                  pad_token=family.pad, unk_token=family.unk,
                                  additional_special_tokens=list(family.extra) or None)
    if family.chat_template:
        tok.chat_template = family.chat_template
    return tok


def _config(family: Family, tok, *, hidden: int, layers: int):
    from transformers import AutoConfig

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if family.architecture == "deberta-v2":
        return AutoConfig.for_model("deberta-v2", vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=4, intermediate_size=2 * hidden, max_position_embeddings=512,
                                    num_labels=1, pad_token_id=tok.pad_token_id)
    heads, kv = 4, (2 if family.architecture in ("mistral", "qwen2") else 4)  # grouped-query attention as the real ones
    return AutoConfig.for_model(family.architecture, vocab_size=len(tok), hidden_size=hidden,
                                intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                num_key_value_heads=kv, max_position_embeddings=4096, tie_word_embeddings=False,
                                num_labels=1, **ids, **family.model_options)


def save_model(folder: Path, family: Family, *, seed: int, hidden: int = 64, layers: int = 2) -> Path:
    """A stand-in of ``family`` with random weights (seeded), its tokenizer and generation config, in ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationConfig

    tok = tokenizer(family)
    config = _config(family, tok, hidden=hidden, layers=layers)
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if family.classifier else AutoModelForCausalLM
    model = auto.from_config(config)
    if not family.classifier and family.stop:
        model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                                                   eos_token_id=[tok.convert_tokens_to_ids(t) for t in family.stop])
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def hub_cache_entry(cache: Path, name: str, source: Path) -> Path:
    """Copy ``source``'s files into the hub cache under ``name`` (refs/main -> snapshots/<commit>/)."""
    root = cache / f"models--{name.replace('/', '--')}"
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        shutil.copy(file, snapshot / file.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(COMMIT)
    return snapshot


def signature() -> str:
    """What identifies the stand-ins a hub cache holds: this module's source (names, families, sizes, seeds)."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def hub_models(cache: Path, names: Sequence[str] = tuple(HUB_MODELS), *, work: Path | None = None) -> dict[str, Path]:
    """A stand-in for each hub name in ``cache``; models of the same family share one build."""
    unknown = [n for n in names if n not in HUB_MODELS]
    if unknown:
        raise KeyError(f"no stand-in family for hub model(s) {unknown}: add them to "
                       f"mfnb.rehearsal.stand_ins.HUB_MODELS")
    work = work or cache.parent / "stand-in-builds"
    built: dict[int, Path] = {}
    out = {}
    for i, name in enumerate(names):
        family = HUB_MODELS[name]
        if id(family) not in built:
            built[id(family)] = save_model(work / f"family-{len(built)}", family, seed=i)
        out[name] = hub_cache_entry(cache, name, built[id(family)])
    return out


# --------------------------------------------------------------------------------------------- datasets


def _parquet(folder: Path, split: str, rows: list[dict]) -> None:
    import datasets

    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def _json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def hh(i: int) -> str:
    """An Anthropic-HH dialogue prompt of two human turns."""
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
    alpaca_eval_difficulty(folder / "df_gamed.csv")
    return folder


def alpaca_eval_difficulty(path: Path, n: int = 805, seed: int = 0) -> Path:
    """A stand-in for tatsu-lab/alpaca_eval's ``df_gamed.csv``, which alpaca_eval's length-controlled win rate
    reads: its columns (``model, index, preference, std_delta_len, instruction_difficulty,
    not_gamed_baseline``), one difficulty per instruction and two "gamed" baselines' annotations over all ``n``
    instructions, all of it synthetic (seeded draws; the model names say ``stand-in``), so the LC code path runs
    offline. The real file holds fitted difficulties and the annotations of GPT-4 told to be verbose / concise."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n)
    frames = []
    for model, shift in (("stand-in_gamed_verbose", 1.0), ("stand-in_gamed_concise", -1.0)):
        delta = rng.normal(-shift, 0.5, n)  # AlpacaEval's std_delta_len: baseline minus model length, standardised
        p = 1 / (1 + np.exp(-(0.3 * difficulty - 0.8 * np.tanh(delta))))
        frames.append(pd.DataFrame({"model": model, "index": np.arange(n), "preference": p.round(4),
                                    "std_delta_len": delta.round(4), "instruction_difficulty": difficulty.round(4),
                                    "not_gamed_baseline": False}))
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.concat(frames, ignore_index=True).to_csv(path, index=False)
    return path


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


def _post(i: int) -> str:
    return (f"SUBREDDIT: r/{TOPICS[i % 10]}\n\nTITLE: about {TOPICS[(i + 3) % 10]} {i}\n\nPOST: I asked about "
            f"{TOPICS[i % 10]} and {TOPICS[(i + 5) % 10]} {i} times.\n\nTL;DR:")


def tldr(sft_folder: Path, preference_folder: Path, n_train: int = 12, n_eval: int = 20, n_pref: int = 12) -> tuple[Path, Path]:
    """trl-lib/tldr (prompt, completion; train / validation / test) and trl-lib/tldr-preference (prompt, chosen,
    rejected; train / validation), as parquet under data/."""
    for split, start, n in (("train", 0, n_train), ("validation", 1000, n_eval), ("test", 2000, n_eval)):
        _parquet(sft_folder, split, [{"prompt": _post(i), "completion": f" {TOPICS[i % 10]} summary {i}"}
                                     for i in range(start, start + n)])
    for split, start, n in (("train", 3000, n_pref), ("validation", 4000, 2)):
        _parquet(preference_folder, split, [{"prompt": _post(i), "chosen": f" short {i}", "rejected": f" long {i}"}
                                            for i in range(start, start + n)])
    return sft_folder, preference_folder


@dataclass
class DataSizes:
    """Row counts of the stand-in datasets (the rehearsal's overlays ask for subsets of these)."""

    rm_static_train: int = 48
    rm_static_test: int = 16
    ultrafeedback_train: int = 20
    ultrafeedback_dev: int = 6
    alpaca_eval: int = 8
    alpaca_farm_sft: int = 12
    alpaca_farm_pref: int = 12
    alpaca_farm_eval: int = 10
    tldr_train: int = 12
    tldr_eval: int = 20


def datasets(root: Path, sizes: DataSizes = DataSizes()) -> dict[str, Path]:
    """Every paper dataset as a local folder under ``root``, named like its hub repository."""
    out = {"Dahoas/rm-static": rm_static(root / "Dahoas--rm-static", sizes.rm_static_train, sizes.rm_static_test),
           "HuggingFaceH4/ultrafeedback_binarized": ultrafeedback(root / "HuggingFaceH4--ultrafeedback_binarized",
                                                                  sizes.ultrafeedback_train, sizes.ultrafeedback_dev),
           "tatsu-lab/alpaca_eval": alpaca_eval(root / "tatsu-lab--alpaca_eval", sizes.alpaca_eval),
           "tatsu-lab/alpaca_farm": alpaca_farm(root / "tatsu-lab--alpaca_farm", sizes.alpaca_farm_sft,
                                                sizes.alpaca_farm_pref, sizes.alpaca_farm_eval)}
    sft, pref = tldr(root / "trl-lib--tldr", root / "trl-lib--tldr-preference", sizes.tldr_train, sizes.tldr_eval)
    out.update({"trl-lib/tldr": sft, "trl-lib/tldr-preference": pref})
    return out
