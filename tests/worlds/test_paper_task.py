"""The papers' dataset loaders, on small local folders written in exactly each hub repository's layout and
schema (the hub is out of reach here), read through the same code path as a hub name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mfnb.worlds.paper import task as hub_data
from mfnb.worlds.paper.task import DataSource, HubDataError

datasets = pytest.importorskip("datasets")


@pytest.fixture(autouse=True)
def offline_and_private_cache(tmp_path, monkeypatch):
    """No hub access, and the datasets cache of these throwaway files under tmp_path."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    datasets.disable_progress_bars()


def _parquet(folder: Path, split: str, rows: list[dict]) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def _json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))


def _hh(i: int) -> str:
    return f"\n\nHuman: question {i}?\n\nAssistant:"


@pytest.fixture
def rm_static_folder(tmp_path) -> Path:
    """Dahoas/rm-static's layout: data/{train,test}-*.parquet with prompt, response, chosen, rejected."""
    folder = tmp_path / "rm-static"
    row = lambda i: {"prompt": _hh(i), "response": f" good {i}", "chosen": f" good {i}", "rejected": f" bad {i}"}
    _parquet(folder, "train", [row(i) for i in range(40)] + [row(100)])  # prompt 100 is also a test prompt
    _parquet(folder, "test", [row(i) for i in range(100, 130)] + [row(100)])  # one duplicated prompt
    return folder


def test_rm_static_split_sizes_disjointness_and_seeds(rm_static_folder):
    source = DataSource(path=str(rm_static_folder))
    data = hub_data.rm_static(source, n_validation=5, n_test=10, seed=0)
    assert [len(data.prompts[s]) for s in ("validation", "test")] == [5, 10]
    held = set(data.prompts["validation"]) | set(data.prompts["test"])
    assert len(held) == 15 and held <= {_hh(i) for i in range(100, 130)}
    assert not held & set(data.prompts["train"])
    assert set(data.prompts["train"]) == {_hh(i) for i in range(40)} | ({_hh(100)} - held)
    assert data.references["test"] == [" good " + p.split("question ")[1].split("?")[0] for p in data.prompts["test"]]
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in data.preference_rows["train"])
    again = hub_data.rm_static(source, n_validation=5, n_test=10, seed=0)
    assert again.prompts == data.prompts
    assert hub_data.rm_static(source, n_validation=5, n_test=10, seed=1).prompts["test"] != data.prompts["test"]
    assert len(hub_data.rm_static(source, n_validation=5, n_test=10, n_train=7).prompts["train"]) == 7


def test_rm_static_too_few_prompts_names_the_counts(rm_static_folder):
    with pytest.raises(HubDataError, match=r"asked for 700 .* holds only 30"):
        hub_data.rm_static(DataSource(path=str(rm_static_folder)))


def test_missing_columns_name_dataset_missing_and_found(tmp_path):
    folder = tmp_path / "wrong"
    _parquet(folder, "test", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(HubDataError) as err:
        hub_data.rm_static(DataSource(path=str(folder)), label="world.data")
    message = str(err.value)
    assert "world.data" in message and str(folder) in message
    assert "['chosen', 'rejected']" in message and "['prompt', 'answer']" in message


def test_unreachable_hub_name_says_what_to_do():
    with pytest.raises(HubDataError) as err:
        hub_data.rm_static(label="world.data")
    message = str(err.value)
    assert "Dahoas/rm-static" in message and "cannot be reached" in message
    assert "hf download Dahoas/rm-static --repo-type dataset" in message and "world.data.path" in message


def test_unreachable_hub_files_say_what_to_do():
    with pytest.raises(HubDataError, match=r"tatsu-lab/alpaca_eval cannot be reached .*hf download tatsu-lab/alpaca_eval"):
        hub_data.alpaca_eval()


def test_missing_folder_split_and_file(tmp_path, rm_static_folder):
    with pytest.raises(HubDataError, match="local folder .*nowhere not found"):
        hub_data.load_split(DataSource(path=str(tmp_path / "nowhere")), "train", ["prompt"], "data")
    with pytest.raises(HubDataError, match=r"rm-static has no split 'dev'"):
        hub_data.load_split(DataSource(path=str(rm_static_folder)), "dev", ["prompt"], "data")
    with pytest.raises(HubDataError, match=r"files: no file for split 'dev'; files are given for \['eval'\]"):
        hub_data.load_split(DataSource(path="x/y", files={"eval": "e.json"}), "dev", ["prompt"], "data")
    with pytest.raises(HubDataError, match=r"data.files.eval: .*e.json not found"):
        hub_data.load_split(DataSource(path=str(tmp_path), files={"eval": "e.json"}), "eval", ["prompt"], "data")


def test_builder_with_data_files_stands_in_for_a_hub_name(tmp_path):
    rows = [{"prompt": _hh(i), "response": "r", "chosen": "c", "rejected": "r"} for i in range(4)]
    for split in ("train", "test"):
        datasets.Dataset.from_list(rows).to_json(str(tmp_path / f"{split}.jsonl"))
    source = DataSource(path="json", files={s: str(tmp_path / f"{s}.jsonl") for s in ("train", "test")})
    data = hub_data.rm_static(source, n_validation=1, n_test=2)
    assert len(data.prompts["test"]) == 2 and len(data.prompts["train"]) == 1


def _messages(prompt: str, answer: str) -> list[dict]:
    return [{"content": prompt, "role": "user"}, {"content": answer, "role": "assistant"}]


@pytest.fixture
def ultrafeedback_folder(tmp_path) -> Path:
    """HuggingFaceH4/ultrafeedback_binarized's layout: data/<split>-*.parquet named by a README config."""
    folder = tmp_path / "ultrafeedback_binarized"
    splits = {"train_prefs": 20, "test_prefs": 6, "train_sft": 3, "test_sft": 3, "train_gen": 3, "test_gen": 3}
    for split, n in splits.items():
        _parquet(folder, split, [{"prompt": f"{split} q{i}", "prompt_id": str(i),
                                  "chosen": _messages(f"{split} q{i}", f"good {i}"),
                                  "rejected": _messages(f"{split} q{i}", f"bad {i}"),
                                  "messages": _messages(f"{split} q{i}", f"good {i}"),
                                  "score_chosen": 8.0, "score_rejected": 3.5} for i in range(n)])
    config = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in splits)
    (folder / "README.md").write_text(f"---\nconfigs:\n- config_name: default\n  data_files:\n{config}\n---\n")
    return folder


def test_ultrafeedback_messages_to_text_and_nested_fractions(ultrafeedback_folder):
    data = hub_data.ultrafeedback(DataSource(path=str(ultrafeedback_folder)), seed=0)
    train = data.preference_rows["train"]
    assert len(train) == 20 and len(data.prompts["dev"]) == 6
    assert all(r["chosen"] == "good " + r["prompt"].split("q")[-1] for r in train)
    assert all(r["rejected"].startswith("bad ") for r in train)
    assert [r["prompt"] for r in train] != [f"train_prefs q{i}" for i in range(20)]  # a seeded order
    parts = hub_data.nested_fractions(train, [0.05, 0.1, 0.2, 0.4, 1.0])
    assert [len(parts[f]) for f in (0.05, 0.1, 0.2, 0.4, 1.0)] == [1, 2, 4, 8, 20]
    assert all(parts[a] == parts[b][: len(parts[a])] for a, b in [(0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 1.0)])
    with pytest.raises(HubDataError, match=r"fractions: 0 is not in \(0, 1\]"):
        hub_data.nested_fractions(train, [0])


def test_ultrafeedback_malformed_messages_name_row_and_column(tmp_path):
    folder = tmp_path / "uf"
    row = {"prompt": "q", "chosen": [{"content": "q", "role": "user"}], "rejected": _messages("q", "b")}
    _parquet(folder, "train", [row])
    with pytest.raises(HubDataError, match=r"split 'train', row 0, column 'chosen': expected a list"):
        hub_data.ultrafeedback(DataSource(path=str(folder)), train_split="train", dev_split="train")


@pytest.fixture
def alpaca_farm_folder(tmp_path) -> Path:
    """tatsu-lab/alpaca_farm's files (a script repository: its loading script is there but never run)."""
    folder = tmp_path / "alpaca_farm"
    folder.mkdir()
    (folder / "alpaca_farm.py").write_text("raise SystemExit('a loading script must not run')\n")
    row = lambda i: {"instruction": f"do {i}", "input": "" if i % 2 else f"with {i}", "output": f"done {i}"}
    for split, n in {"sft": 6, "preference": 8, "unlabeled": 2, "val": 2}.items():
        _json(folder / "alpaca_instructions" / f"{split}.json", [row(i) for i in range(n)])
    _json(folder / "alpaca_human_preference.json",
          [{"instruction": f"do {i}", "input": "", "output_1": f"one {i}", "output_2": f"two {i}",
            "preference": 1 + i % 2} for i in range(5)])
    _json(folder / "alpaca_farm_evaluation.json",
          [{**row(i), "generator": "text-davinci-003", "dataset": "selfinstruct", "datasplit": "eval"}
           for i in range(10)])
    return folder


def test_alpaca_farm_from_files_with_the_papers_splits(alpaca_farm_folder):
    local = lambda s: DataSource(path=str(alpaca_farm_folder), files=s.files)
    data = hub_data.alpaca_farm(local(hub_data.ALPACA_INSTRUCTIONS), local(hub_data.ALPACA_HUMAN_PREFERENCE),
                                local(hub_data.ALPACA_FARM_EVALUATION), n_validation=4, seed=0)
    assert len(data.sft_rows["train"]) == 6 and len(data.prompts["preference"]) == 8
    assert (len(data.prompts["validation"]), len(data.prompts["test"])) == (4, 6)
    first = data.sft_rows["train"][0]
    assert first["prompt"] == hub_data.ALPACA_PROMPT_INPUT.format(instruction="do 0", input="with 0")
    assert first["completion"] == "done 0"
    assert data.sft_rows["train"][1]["prompt"].endswith("### Instruction:\ndo 1\n\n### Response:")
    pairs = data.preference_rows["train"]
    assert [(p["chosen"], p["rejected"]) for p in pairs[:2]] == [("one 0", "two 0"), ("two 1", "one 1")]
    for split in ("validation", "test"):  # each reference belongs to its prompt
        for prompt, ref in zip(data.prompts[split], data.references[split]):
            assert prompt.split("### Instruction:\ndo ")[1].split("\n")[0] == ref.split()[-1]
    plain = hub_data.alpaca_farm(local(hub_data.ALPACA_INSTRUCTIONS), local(hub_data.ALPACA_HUMAN_PREFERENCE),
                                 local(hub_data.ALPACA_FARM_EVALUATION), n_validation=4, prompt_style="plain")
    assert plain.sft_rows["train"][0]["prompt"] == "do 0\n\nwith 0"


def test_alpaca_farm_bad_preference_value(alpaca_farm_folder):
    _json(alpaca_farm_folder / "alpaca_human_preference.json",
          [{"instruction": "i", "input": "", "output_1": "a", "output_2": "b", "preference": 0}])
    local = lambda s: DataSource(path=str(alpaca_farm_folder), files=s.files)
    with pytest.raises(HubDataError, match=r"data.human_preference: row 0: preference must be 1 or 2, got 0"):
        hub_data.alpaca_farm(local(hub_data.ALPACA_INSTRUCTIONS), local(hub_data.ALPACA_HUMAN_PREFERENCE),
                             local(hub_data.ALPACA_FARM_EVALUATION), n_validation=4)


def test_alpaca_eval_references_from_the_gpt4_baseline(tmp_path):
    folder = tmp_path / "alpaca_eval"
    folder.mkdir()
    (folder / "alpaca_eval.py").write_text("raise SystemExit\n")
    rows = lambda gen: [{"instruction": f"task {i}", "output": f"{gen} {i}", "generator": gen, "dataset": "x"}
                        for i in range(5)]
    _json(folder / "alpaca_eval.json", rows("text_davinci_003"))
    _json(folder / "alpaca_eval_gpt4_baseline.json", rows("gpt4_turbo")[::-1])
    source = DataSource(path=str(folder), files=hub_data.ALPACA_EVAL.files)
    data = hub_data.alpaca_eval(source)
    assert data.prompts["eval"] == [f"task {i}" for i in range(5)]
    assert data.references["eval"] == [f"gpt4_turbo {i}" for i in range(5)]
    assert hub_data.alpaca_eval(source, reference_split=None).references["eval"][0] == "text_davinci_003 0"


def test_tldr_ten_percent_of_validation_and_test(tmp_path):
    sft, pref = tmp_path / "tldr", tmp_path / "tldr-preference"
    post = lambda s, i: f"SUBREDDIT: r/x\nTITLE: {s} {i}\nPOST: text\nTL;DR:"
    for split, n in {"train": 12, "validation": 30, "test": 40}.items():
        _parquet(sft, split, [{"prompt": post(split, i), "completion": f" sum {split} {i}"} for i in range(n)])
    _parquet(pref, "train", [{"prompt": post("train", i), "chosen": " a", "rejected": " b"} for i in range(7)])
    data = hub_data.tldr(DataSource(path=str(sft)), DataSource(path=str(pref)), seed=0)
    assert (len(data.prompts["validation"]), len(data.prompts["test"])) == (3, 4)
    assert len(data.sft_rows["train"]) == 12 and len(data.preference_rows["train"]) == 7
    for prompt, ref in zip(data.prompts["test"], data.references["test"]):
        assert prompt.split("TITLE: ")[1].split("\n")[0] == ref.split("sum ")[1]
    assert data.sizes()["prompts"] == {"train": 12, "validation": 3, "test": 4}


def test_hh_messages():
    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert hub_data.hh_messages(prompt) == [{"role": "user", "content": "hi"},
                                            {"role": "assistant", "content": "hello"},
                                            {"role": "user", "content": "how are you?"}]
    with pytest.raises(HubDataError, match="not an HH dialogue"):
        hub_data.hh_messages("just text")
