"""The rehearsal's parts: stand-ins under every hub name the paper params use (each of its family, loaded by name
offline), the judge endpoint (key check, counting, answers the judge parses), the overrides that point the paper
params at the stand-ins, and the overlays (sizes only, valid against each notebook's schema)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mfnb import cli
from mfnb.core import paths
from mfnb.core.params import merge_overlay
from mfnb.judges import JudgeError, OpenAIJudge
from mfnb.judges.llm import parse_verdict
from mfnb.rehearsal import stand_ins
from mfnb.rehearsal.endpoint import JudgeEndpoint, stub_answer
from mfnb.rehearsal.run import NOTEBOOKS, RehearsalError, stand_in_hub, stand_in_overrides

ROOT = paths.project_root()


def _paper_files() -> list[Path]:
    return sorted((ROOT / "params" / "paper").rglob("*.yaml"))


def _hub_model_names(values) -> set[str]:
    """Every hub model a params file names: role models and reward models (``name``)."""
    found = set()
    if isinstance(values, dict):
        for key, value in values.items():
            if key in ("model", "name") and isinstance(value, str) and value.count("/") == 1:
                found.add(value)
            found |= _hub_model_names(value)
    elif isinstance(values, list):
        for value in values:
            found |= _hub_model_names(value)
    return found


def test_every_hub_model_of_the_paper_params_has_a_stand_in():
    named = set().union(*(_hub_model_names(yaml.safe_load(f.read_text())) for f in _paper_files()))
    named = {n for n in named if not n.startswith(("gpt-", "data"))}
    assert {"lmsys/vicuna-7b-v1.5", "weqweasdas/RM-Mistral-7B", "Qwen/Qwen2-7B-Instruct"} <= named
    assert named <= set(stand_ins.HUB_MODELS), sorted(named - set(stand_ins.HUB_MODELS))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("rehearsal-hub")
    stand_ins.hub_models(root / "hub", work=root / "builds")
    return root / "hub"


def test_a_hub_built_by_older_stand_ins_is_rebuilt_and_a_current_one_reused(tmp_path, monkeypatch):
    # the hub lives in the persistent cache: one built before a model joined the stand-ins lacks that model
    built = []
    monkeypatch.setattr(stand_ins, "hub_models", lambda hub, work: (built.append(hub), hub.mkdir(parents=True)))
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / ".complete").write_text("")                    # the marker an older version wrote
    (hub / "models--old--one").mkdir()
    assert stand_in_hub(hub, tmp_path / "builds") is True
    assert built == [hub] and not (hub / "models--old--one").exists()
    assert (hub / ".complete").read_text() == stand_ins.signature()
    assert stand_in_hub(hub, tmp_path / "builds") is False and len(built) == 1


def test_stand_ins_load_by_hub_name_offline_with_their_family(hub, monkeypatch):
    import huggingface_hub.constants

    from mfnb.worlds.paper import hub_models

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    architectures = {}
    for name, family in stand_ins.HUB_MODELS.items():
        folder = hub_models.resolve(name, field="test")
        check = hub_models.check_reward_model if family.classifier else hub_models.check_causal_lm
        architectures[name] = check(folder, name=name, field="test")["architectures"][0]
    assert architectures["lmsys/vicuna-7b-v1.5"] == "LlamaForCausalLM"
    assert architectures["mistralai/Mistral-7B-Instruct-v0.2"] == "MistralForCausalLM"
    assert architectures["Qwen/Qwen2-7B-Instruct"] == "Qwen2ForCausalLM"
    assert architectures["weqweasdas/RM-Mistral-7B"] == "MistralForSequenceClassification"
    assert architectures["OpenAssistant/reward-model-deberta-v3-large-v2"] == "DebertaV2ForSequenceClassification"
    llama3 = hub_models.resolve("meta-llama/Meta-Llama-3-8B-Instruct", field="test")
    stops = json.loads((llama3 / "generation_config.json").read_text())["eos_token_id"]
    assert isinstance(stops, list) and len(stops) == 2  # <|end_of_text|> and <|eot_id|>, as the real one


def test_stand_in_templates_keep_their_models_quirks():
    from jinja2.exceptions import TemplateError

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "more"}]
    mistral = stand_ins.tokenizer(stand_ins.MISTRAL)
    assert mistral.apply_chat_template(turns, tokenize=False) == "<s>[INST] hi [/INST]yo</s>[INST] more [/INST]"
    with pytest.raises(TemplateError, match="alternate"):
        mistral.apply_chat_template(turns[1:], tokenize=False)
    qwen = stand_ins.tokenizer(stand_ins.QWEN2)
    text = qwen.apply_chat_template(turns[:1], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    assert qwen.bos_token is None and qwen("a")["input_ids"][:1] != [qwen.bos_token_id]
    llama3 = stand_ins.tokenizer(stand_ins.LLAMA3)
    assert llama3("a")["input_ids"][0] == llama3.convert_tokens_to_ids("<|begin_of_text|>")


def test_endpoint_checks_the_key_counts_and_answers_in_the_papers_format():
    with JudgeEndpoint(stub_answer, key="sk-right") as endpoint:
        judge = OpenAIJudge("gpt-4o", base_url=endpoint.url, api_key_env="MFNB_TEST_JUDGE_KEY", max_tokens=48)
        import os

        os.environ["MFNB_TEST_JUDGE_KEY"] = "sk-wrong-key-0123456789abcdefgh"
        try:
            with pytest.raises(JudgeError, match=r"^judge: endpoint .* refused the key in \$MFNB_TEST_JUDGE_KEY "
                                                 r"\(HTTP 401") as err:
                judge.check_access("judge")
            assert "sk-wrong-key" not in str(err.value)
            assert endpoint.counts()["refused"] == 1
            os.environ["MFNB_TEST_JUDGE_KEY"] = "sk-right"
            judge._client = None
            judge.check_access("judge")
            outcomes = judge.judge(["q1", "q2", "q3"], [["a", "b"], ["c", "d"], ["e", "f"]])
        finally:
            os.environ.pop("MFNB_TEST_JUDGE_KEY", None)
        assert len(outcomes) == 3 and endpoint.counts()["requests"] == 6  # both orders of each pair
    assert parse_verdict(stub_answer({"messages": [{"role": "user", "content": "x"}]})["choices"][0]["message"]
                         ["content"]) in ("A", "B")


def test_a_judge_endpoint_out_of_reach_is_named_before_any_work():
    from mfnb.judges import JudgeUnavailableError

    judge = OpenAIJudge("gpt-4o", base_url="http://127.0.0.1:9/v1", api_key_env="MFNB_TEST_JUDGE_KEY", max_retries=0)
    import os

    os.environ["MFNB_TEST_JUDGE_KEY"] = "sk-any"
    try:
        with pytest.raises(JudgeUnavailableError, match=r"^conflict.judge.base_url: endpoint http://127.0.0.1:9/v1 .* "
                                                        r"cannot be reached"):
            judge.check_access("conflict.judge")
    finally:
        os.environ.pop("MFNB_TEST_JUDGE_KEY", None)


def test_overrides_point_every_dataset_and_openai_judge_at_the_stand_ins():
    values = cli.resolve_parameters("04_hbat_ablations", "paper", None, [],
                                    [str(ROOT / "params" / "rehearsal" / "04_hbat_ablations.yaml")])[1]
    data = {"tatsu-lab/alpaca_farm": Path("/data/af")}
    overrides = dict(stand_in_overrides(values, data, "http://127.0.0.1:1/v1"))
    assert overrides == {"world.data.instructions.path": "/data/af", "world.data.human_preference.path": "/data/af",
                         "world.data.evaluation.path": "/data/af", "conflict.judge.base_url": "http://127.0.0.1:1/v1"}
    with pytest.raises(RehearsalError, match=r"world.data.instructions.path: no stand-in for dataset "
                                             r"'tatsu-lab/alpaca_farm'"):
        stand_in_overrides(values, {}, "http://x")


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_each_overlay_is_valid_and_changes_sizes_only(notebook, capsys):
    overlay = ROOT / "params" / "rehearsal" / f"{notebook}.yaml"
    assert cli.main(["run", notebook, "--profile", "paper", "--overlay", str(overlay), "--check"]) == 0
    merged = yaml.safe_load(capsys.readouterr().out)
    paper = yaml.safe_load((ROOT / "params" / "paper" / f"{notebook}.yaml").read_text())

    def changed(a, b, key=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [c for k in set(a) | set(b) for c in changed(a.get(k), b.get(k), f"{key}.{k}".strip("."))]
        return [] if a == b else [(key, a, b)]

    # the one change that is not a size, and why, is in the overlay's comment: without it 02 may train nothing
    reasoned = {("02_multifidelity_traces", "gamma")}
    for key, before, after in changed(paper, merged):
        sized = all(isinstance(v, (int, float, list, type(None))) and not isinstance(v, bool) for v in (before, after))
        assert sized, f"{notebook}: {key} changes from {before!r} to {after!r}, not a size"
        if (notebook, key) in reasoned:
            assert f"{key}:" in overlay.read_text() and "not a size" in overlay.read_text()


def test_overlay_errors_name_the_overlay_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {max_new_tokenz: 3}\n")
    assert cli.main(["run", "01", "--profile", "paper", "--overlay", str(bad), "--check"]) == 2
    err = capsys.readouterr().err
    assert f"with {bad}" in err and "max_new_tokenz" in err and "nothing was run" in err
    assert merge_overlay({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2}) == \
        {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}


def test_processes_flag_alone_keeps_the_params_config(capsys):
    assert cli.main(["04", "--profile", "paper", "--check", "--processes", "2"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["launch"] == {"processes": 2, "config": "deepspeed_zero2"}


def test_a_refused_judge_key_stops_the_paper_notebook_through_the_cli_before_any_work(hub, tmp_path):
    """The path a user takes (python -m mfnb run) on the paper params: the judge's endpoint refuses the key, and the
    notebook stops in its first cell with one message naming the variable, before any sampling; the key is not
    printed."""
    import os
    import subprocess
    import sys

    data = stand_ins.datasets(tmp_path / "data")
    overlay = ROOT / "params" / "rehearsal" / "01_fidelity_winrates.yaml"
    with JudgeEndpoint(stub_answer, key="sk-the-right-one") as endpoint:
        values = cli.resolve_parameters("01_fidelity_winrates", "paper", None, [], [str(overlay)])[1]
        overrides = [a for k, v in stand_in_overrides(values, data, endpoint.url) for a in ("-p", k, v)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "MFNB_CACHE": str(tmp_path / "cache"),
               "MFNB_RESULTS": str(tmp_path / "results"), "OPENAI_API_KEY": "sk-a-wrong-key-0123456789abcdef"}
        done = subprocess.run([sys.executable, "-m", "mfnb", "run", "01", "--profile", "paper", "--overlay", str(overlay),
                               *overrides, "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "failed at In [" in done.stderr and "refused the key in $OPENAI_API_KEY (HTTP 401" in done.stderr
    assert "sk-a-wrong-key" not in done.stderr + done.stdout
    assert endpoint.counts() == {"requests": 0, "refused": 1, "errors": 0, "distinct": 0}
    assert not (tmp_path / "cache" / "paper_responses").exists()  # nothing was sampled


def test_notebook_03s_alpaca_eval_scorer_is_pointed_at_the_endpoint_and_the_stand_in_difficulty_file(tmp_path):
    values = cli.resolve_parameters("03_expo_alpha_curves", "paper", None, [],
                                    [str(ROOT / "params" / "rehearsal" / "03_expo_alpha_curves.yaml")])[1]
    data = {"HuggingFaceH4/ultrafeedback_binarized": Path("/data/uf"), "tatsu-lab/alpaca_eval": Path("/data/ae")}
    overrides = dict(stand_in_overrides(values, data, "http://127.0.0.1:1/v1"))
    assert {k: v for k, v in overrides.items() if k.startswith("alpaca_eval.")} == {
        "alpaca_eval.base_url": "http://127.0.0.1:1/v1", "alpaca_eval.api_key_env": "OPENAI_API_KEY",
        "alpaca_eval.difficulty_file": "/data/ae/df_gamed.csv"}
    assert len(values["off_the_shelf"]) <= 2  # the overlay keeps Table 2 short


def test_the_stand_in_difficulty_file_runs_alpaca_evals_regularised_lc(tmp_path):
    from mfnb.judges.alpaca_eval import AlpacaEvalError, length_controlled, require_alpaca_eval

    try:
        require_alpaca_eval()
    except AlpacaEvalError as missing:
        pytest.skip(str(missing))
    file = stand_ins.alpaca_eval_difficulty(tmp_path / "df_gamed.csv")
    prefs = [0.9, 0.2, 0.7, 0.6, 0.1, 0.8, 0.4, 0.3]
    lc = length_controlled([f"i{i}" for i in range(8)], ["a" * (10 + 7 * i) for i in range(8)], ["b" * 40] * 8, prefs,
                           difficulty_file=file, glm="length_controlled_v1")
    assert lc["n"] == 8 and lc["win_rate"] == pytest.approx(sum(prefs) / 8) and 0 < lc["lc_win_rate"] < 1
