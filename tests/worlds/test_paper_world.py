"""The `paper` world on stand-ins: tiny Llamas in a private hub cache under the papers' hub names (loaded by
name with HF_HUB_OFFLINE=1) and small dataset folders in each hub repository's layout, built from the
world specs of params/paper/ with only the dataset paths pointed at the local folders."""
from __future__ import annotations

import json
import math
import shutil

import paper_fixtures as fx
import pytest
import yaml
from fake_vllm import alive, fake_vllm_python

from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.models import SamplingParams
from mfnb.rehearsal import stand_ins as hub  # the rehearsal's stand-ins (a fixture here is named stand_ins)
from mfnb.worlds import make_world
from mfnb.worlds.paper.hub_models import HubModelError
from mfnb.worlds.paper.world import PaperWorldParams

datasets = pytest.importorskip("datasets")
ROOT = paths.project_root()
STUDENT, EXPERTS = "lmsys/vicuna-7b-v1.5", ["meta-llama/Meta-Llama-3-8B-Instruct", "mistralai/Mistral-7B-Instruct-v0.2",
                                           "Qwen/Qwen2-7B-Instruct"]
SAMPLING = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.9, batch_size=4)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Model folders (built once for the module) and a hub cache holding them under the papers' names."""
    root = tmp_path_factory.mktemp("paper-stand-ins")
    plain = fx.save_llama(root / "plain-llama", chat_template=None, seed=0)
    chat = fx.save_llama(root / "chat-llama", chat_template=hub.ZEPHYR_TEMPLATE, seed=1)
    rm = fx.save_llama(root / "reward", chat_template=hub.ZEPHYR_TEMPLATE, seed=2, classifier=True)
    cache = root / "hub"
    for name in (STUDENT, "meta-llama/Llama-2-7b-hf"):
        hub.hub_cache_entry(cache, name, plain)
    for name in EXPERTS + ["alignment-handbook/zephyr-7b-sft-full"]:
        hub.hub_cache_entry(cache, name, chat)
    hub.hub_cache_entry(cache, "weqweasdas/RM-Mistral-7B", rm)
    return {"root": root, "plain": plain, "chat": chat, "rm": rm, "cache": cache}


@pytest.fixture(autouse=True)
def offline(stand_ins, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(stand_ins["cache"]))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "mfnb-cache"))
    datasets.disable_progress_bars()


def rm_static_world(tmp_path, **changes):
    spec = fx.paper_world_spec("01_fidelity_winrates", ROOT, source=str(hub.rm_static(tmp_path / "rm-static")))
    spec["data"].update(n_validation=4, n_test=6)
    spec.update({"engine": "hf", "engine_dtype": "float32", **changes})
    return make_world(spec)


def test_every_paper_world_spec_validates():
    for notebook in ("01_fidelity_winrates", "02_multifidelity_traces", "03_expo_alpha_curves", "04_hbat_ablations"):
        values = yaml.safe_load((ROOT / "params" / "paper" / f"{notebook}.yaml").read_text())
        params = PaperWorldParams.validate_mapping(values["world"], source=notebook)
        assert params.prompt_role in params.roles


def test_rm_static_world_prompts_roles_and_costs(tmp_path):
    world = rm_static_world(tmp_path)
    assert world.kind == "paper" and world.quality is None
    assert world.roles == ["student", "llama3", "mistral", "qwen2"]
    assert world.costs == {"student": 1.0, "llama3": 1.0, "mistral": 4.0, "qwen2": 16.0}
    sizes = {s: len(p) for s, p in world.prompts.items()}
    assert sizes == {"train": 24, "validation": 4, "test": 6}
    prompt = world.prompts["validation"][0]
    # Vicuna's template: BOS, the system line, the dialogue's turns, the assistant's turn opened
    assert prompt.startswith("<s>A chat between a curious user") and prompt.endswith("ASSISTANT:")
    text = world.query(prompt)
    assert text.startswith("\n\nHuman: tell me about") and text.endswith("\n\nAssistant:")
    assert "USER: tell me about" in prompt and "ASSISTANT: sure.</s>USER: more" in prompt
    assert not set(world.prompts["validation"]) & set(world.prompts["train"])
    assert world.parameters("student") == sum(p.numel() for p in world.load("student")[0].parameters())
    assert "Mistral-7B-Instruct-v0.2" in world.describe("mistral")
    assert world.references(world.prompts["test"][:1])[0].startswith(" good ")


def test_respond_renders_each_role_stores_and_repeats(tmp_path, monkeypatch):
    world = rm_static_world(tmp_path)
    prompts = world.prompts["validation"]
    seen = []
    original = world.render

    def spy(role, text):
        out = original(role, text)
        seen.append((role, out))
        return out

    with monkeypatch.context() as patch:
        patch.setattr(world, "render", spy)
        first = world.respond("llama3", prompts, SAMPLING, seed=3)
    assert len(first) == 4 and all(isinstance(r, str) for r in first)
    expert_prompts = [p for role, p in seen if role == "llama3"]
    assert expert_prompts and all(p.startswith("<|user|>\n") and p.endswith("<|assistant|>\n") for p in expert_prompts)
    # a response depends on its prompt and seed only: alone, in another order, with a repeat
    alone = world.respond("llama3", prompts[2:3], SAMPLING, seed=3)
    assert alone == first[2:3]
    world.close()
    with monkeypatch.context() as patch:
        patch.setattr(world, "_engine", lambda role: (_ for _ in ()).throw(AssertionError("regenerated")))
        assert world.respond("llama3", prompts[::-1], SAMPLING, seed=3) == first[::-1]  # all from the store
    other = rm_static_world(tmp_path)  # a new process would find the same store
    assert other.respond("llama3", prompts, SAMPLING, seed=3) == first
    twice = other.respond("llama3", [prompts[0], prompts[0]], SAMPLING, seed=4)
    assert len(twice) == 2  # two occurrences, two draws (stored as j = 0 and 1)


def test_load_gives_a_trainable_student_with_its_template(tmp_path):
    world = rm_static_world(tmp_path)
    model, tokenizer = world.load("student")
    assert any(p.requires_grad for p in model.parameters()) and tokenizer.padding_side == "left"
    assert "A chat between a curious user" in tokenizer.chat_template
    assert world.key == rm_static_world(tmp_path).key
    changed = rm_static_world(tmp_path, roles={**world.params.model_dump()["roles"],
                                               "student": {"model": STUDENT, "chat_template": "plain", "cost": 1.0}})
    assert changed.key != world.key
    assert changed.prompts["validation"][0] == "<s>" + world.query(world.prompts["validation"][0])


def test_policy_backend_trains_the_paper_student(tmp_path):
    """Notebook 02's backend on the paper world: the student as a LoRA policy, experts through respond."""
    from mfnb.models import LoraParams
    from mfnb.multifidelity import PolicyBackend
    from mfnb.training.config import DPOParams

    world = rm_static_world(tmp_path)
    backend = PolicyBackend(world, "student")
    backend.reset_policy(0, LoraParams(r=2, alpha=4))
    prompts = backend.prompts.train[:4]
    student = backend.generate_student(prompts, 0, SAMPLING)
    expert = backend.generate_expert("mistral", prompts, 0, SAMPLING)
    before = backend.policy_vector().copy()
    metrics = backend.update(prompts, [e + " good" for e in expert], [s + " bad" for s in student], 0,
                             DPOParams(lr=1e-2, batch_size=2, max_length=256))
    assert metrics["pairs_used"] == 4 and (backend.policy_vector() != before).any()


def test_errors_name_the_field_the_name_and_the_fix(tmp_path, stand_ins):
    base = fx.paper_world_spec("01_fidelity_winrates", ROOT, source=str(hub.rm_static(tmp_path / "rm-static")))
    base["data"].update(n_validation=2, n_test=2)

    def world_with(role: str, **spec):
        values = json.loads(json.dumps(base))
        values["roles"][role] = {**values["roles"][role], **spec}
        return make_world(values)

    with pytest.raises(HubModelError) as err:  # not in the hub cache, hub offline
        world_with("qwen2", model="Qwen/Qwen2-72B-Instruct").folder("qwen2")
    message = str(err.value)
    assert "world.roles.qwen2.model" in message and "Qwen/Qwen2-72B-Instruct" in message
    assert "HF_HUB_OFFLINE=1" in message and "hf download Qwen/Qwen2-72B-Instruct" in message
    with pytest.raises(HubModelError, match=r"world.roles.llama3.model: .*reward.* is not a causal LM: its "
                                            r"architectures are \['LlamaForSequenceClassification'\].*reward_model"):
        world_with("llama3", model=str(stand_ins["rm"])).folder("llama3")
    with pytest.raises(HubModelError, match=r"world.roles.llama3.model: model folder not found: \./nowhere"):
        world_with("llama3", model="./nowhere").folder("llama3")
    remote = tmp_path / "remote-code"
    shutil.copytree(stand_ins["chat"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "model_type": "my_llm",
                                                    "auto_map": {"AutoModelForCausalLM": "modeling.MyLM"}}))
    with pytest.raises(HubModelError, match=r"world.roles.mistral.model: .* runs its own Python code .* "
                                            r"world.roles.mistral.trust_remote_code is off"):
        world_with("mistral", model=str(remote)).folder("mistral")
    with pytest.raises(HubModelError, match=r"world.roles.student.chat_template: the tokenizer of lmsys/vicuna-7b-v1.5 "
                                            r"has no chat template; set .* to plain"):
        _ = world_with("student", chat_template="auto").prompts
    with pytest.raises(ParamsError, match=r"world: parameter 'roles.g9': .*give either model"):
        make_world({**base, "roles": {**base["roles"], "g9": {"cost": 1.0}}})
    with pytest.raises(ParamsError, match=r"world: .*prompt_role: 'teacher' is not one of the roles"):
        make_world({**base, "prompt_role": "teacher"})
    bad = tmp_path / "bad-rm-static"
    hub._parquet(bad, "test", [{"prompt": "p", "answer": "a"}])
    with pytest.raises(Exception, match=r"world.data.source: dataset .*bad-rm-static.* lacks the column"):
        _ = make_world({**base, "data": {**base["data"], "source": {"path": str(bad)}}}).prompts


def expo_world(tmp_path):
    spec = fx.paper_world_spec("03_expo_alpha_curves", ROOT, source=str(hub.ultrafeedback(tmp_path / "uf")),
                               alpaca_eval=str(hub.alpaca_eval(tmp_path / "ae")))
    spec["data"]["n_dev"] = 4
    spec.update(engine="hf", engine_dtype="float32")
    return make_world(spec)


def test_expo_capabilities_pairs_references_and_reward_model(tmp_path):
    from mfnb import expo

    world = expo_world(tmp_path)
    assert {s: len(p) for s, p in world.prompts.items()} == {"train": 20, "validation": 4, "test": 8}
    assert world.prompts["train"][0].startswith("<|user|>\n") and world.query(world.prompts["test"][0]).startswith("explain ")
    pairs = world.preference_pairs(world.prompts["train"][:3], "dataset")
    assert [p["prompt"] for p in pairs] == world.prompts["train"][:3]
    assert all(p["chosen"].startswith("good answer") and p["rejected"].startswith("bad answer") for p in pairs)
    with pytest.raises(ParamsError, match=r"preference.source: .* set preference.source: dataset \(got 'correct_vs_habit'\)"):
        world.preference_pairs(world.prompts["train"][:1], "correct_vs_habit")
    baseline = world.respond("gpt4_turbo", world.prompts["test"][:3], SAMPLING)
    assert baseline == ["gpt4 answer 0", "gpt4 answer 1", "gpt4 answer 2"]
    judge = expo.reward_judge(world, {"name": "weqweasdas/RM-Mistral-7B"}, show_progress=False)
    scores = judge.score(world.prompts["test"][:2], baseline[:2])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)
    with pytest.raises(HubModelError, match=r"reward_model.name: .*is not a reward model"):
        world.reward_model({"name": "alignment-handbook/zephyr-7b-sft-full"})


def test_hbat_conflict_on_alpaca_farm(tmp_path):
    """Notebook 04's experiment on the paper world: data, references, scores and one SFT -> DPO run."""
    from mfnb.hbat import HbatExperiment, HbatNotebookParams

    values = yaml.safe_load((ROOT / "params" / "paper" / "04_hbat_ablations.yaml").read_text())
    folder = str(hub.alpaca_farm(tmp_path / "alpaca_farm"))
    for key in ("instructions", "human_preference", "evaluation"):
        values["world"]["data"][key]["path"] = folder
    values["world"]["data"]["n_validation"] = 4
    values["world"].update(engine="hf", engine_dtype="float32")
    values["conflict"].update(n_sft=6, n_pref=6, judge={"kind": "reward_model", "model_or_path": "unused"})
    values.update(methods=["DPO"], seeds=[0], n_test=3, n_validation=2, torch_threads=1,
                  hbat={"n_splits": 1, "sft": {"lr": 1e-3, "batch_size": 4, "epochs": 1.0},
                        "dpo": {"lr": 1e-3, "batch_size": 4, "epochs": 1.0, "reference": "previous"}},
                  sampling={"max_new_tokens": 4, "temperature": 0.75, "top_p": 0.95})
    world = make_world(values["world"])
    rm = world.reward_model({"name": "weqweasdas/RM-Mistral-7B"})
    values["conflict"]["judge"] = {"kind": "reward_model", "model_or_path": str(rm)}
    params = HbatNotebookParams.validate_mapping(values)
    exp = HbatExperiment(params, world=world, store=tmp_path / "store")
    sft, pref = exp.data(0)
    assert len(sft) == 6 and len(pref) == 6
    assert all(r["prompt"].startswith("<s>Below is an instruction") for r in sft + pref)
    assert {r["completion"] for r in sft} <= {f"done sft {i}" for i in range(12)}
    assert {(r["chosen"][:3], r["rejected"][:3]) for r in pref} <= {("one", "two"), ("two", "one")}
    assert exp.conflict.references(exp.prompts["test"][:1])[0].startswith("done eval")
    assert math.isnan(exp.conflict.quality(sft[0]["prompt"], "x"))  # quality: null in the params
    assert math.isfinite(exp.conflict.reward(sft[0]["prompt"], "x"))
    runs = exp.table4_runs(progress=False)
    assert list(runs["method"]) == ["DPO"] and 0 <= runs["win_rate"].iloc[0] <= 1
    assert math.isfinite(runs["reward"].iloc[0]) and math.isnan(runs["quality"].iloc[0])
    with pytest.raises(ParamsError, match=r"conflict.n_sft: 99 asked, alpaca_farm has 12"):
        world.conflict({**values["conflict"], "n_sft": 99})


# -- the served vLLM engine, through a fake vLLM venv (tests/fake_vllm.py) ----------------------------

@pytest.fixture
def fake_vllm(tmp_path) -> str:
    return str(fake_vllm_python(tmp_path / "fake-vllm-venv"))




def test_vllm_without_vllm_is_one_error_naming_the_field_before_anything_runs(tmp_path):
    with pytest.raises(ParamsError, match=r"world.engine: vllm needs vLLM, which is not installed here; set "
                                          r"world.vllm.python to the python of a venv with vLLM .*pip install vllm.*"
                                          r"or set world.engine: hf"):
        rm_static_world(tmp_path, engine="vllm")
    with pytest.raises(ParamsError, match=r"world.vllm.python: /nowhere/python is not an executable python"):
        rm_static_world(tmp_path, engine="auto", vllm={"python": "/nowhere/python"})
    with pytest.raises(ParamsError, match=r"world: unknown parameter 'vllm.gpu_memory_utilisation' \(did you mean "
                                          r"'gpu_memory_utilization'\?\)"):
        rm_static_world(tmp_path, vllm={"gpu_memory_utilisation": 0.5})


def test_auto_engine_serves_vllm_only_where_a_gpu_is_visible(tmp_path, fake_vllm, monkeypatch):
    import torch

    from mfnb.models.engines import vllm_server

    world = rm_static_world(tmp_path, engine="auto", vllm={"python": fake_vllm})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert world.engine_kind() == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert world.engine_kind() == "vllm"
    assert rm_static_world(tmp_path, engine="auto").engine_kind() == "hf"  # no vLLM anywhere: hf
    monkeypatch.setattr(vllm_server, "PROJECT_VENV", str(fake_vllm))  # (an absolute path joins as itself)
    assert rm_static_world(tmp_path, engine="auto").engine_kind() == "vllm"  # `make vllm-venv` built one


def test_store_keys_of_the_hf_engine_and_of_served_vllm(tmp_path, fake_vllm):
    """The hf key is what it always was (existing stores stay valid); the served vLLM's is the key the in-process
    vLLM engine had: the role's identity, engine vllm, vLLM's dtype, the sampling and the seed."""
    from mfnb.worlds.shared.best_of_k import store_key

    sampling = SAMPLING.model_dump(exclude={"batch_size", "engine"})
    for changes, engine, dtype in [({}, "hf", "float32"), ({"engine": "vllm", "vllm": {"python": fake_vllm}},
                                                            "vllm", "auto")]:
        world = rm_static_world(tmp_path, **changes)
        store = world._store("mistral", SAMPLING, 3)
        store.close()
        config = {"model": world.identity("mistral"), "engine": engine, "engine_dtype": dtype,
                  "sampling": sampling, "seed": 3}
        assert store.path.name == f"mistral-{store_key(**config)}.sqlite"


def test_respond_through_served_vllm_starts_stores_and_closes(tmp_path, fake_vllm, monkeypatch):
    from mfnb.models.engines import candidate_seed, close_all

    world = rm_static_world(tmp_path, engine="vllm", vllm={"python": fake_vllm, "gpu_memory_utilization": 0.6})
    prompts = world.prompts["validation"]
    tokenizer = world.tokenizer("llama3")
    out = world.respond("llama3", prompts + prompts[:1], SAMPLING, seed=3)
    texts = [world.query(p) for p in prompts + prompts[:1]]
    js = [0] * len(prompts) + [1]
    lengths = [len(tokenizer(world.render("llama3", t), add_special_tokens=False)["input_ids"]) for t in texts]
    assert out == [f"len={n} seed={candidate_seed(3, t, j)} t=0.7" for n, t, j in zip(lengths, texts, js)]
    server = world._responder[1].server
    assert server.model_name == "llama3" and alive(server.process.pid)
    with monkeypatch.context() as patch:  # everything is stored now
        patch.setattr(world, "_engine", lambda role: (_ for _ in ()).throw(AssertionError("regenerated")))
        assert world.respond("llama3", prompts[::-1], SAMPLING, seed=3) == out[:len(prompts)][::-1]
    pid = server.process.pid
    assert close_all() >= 1 and not alive(pid)  # what a training step calls first
    again = world.respond("llama3", prompts[:2], SAMPLING, seed=9)  # a fresh server for new samples
    pid = world._responder[1].server.process.pid
    assert len(again) == 2 and alive(pid)
    world.close()
    assert not alive(pid) and world._responder is None

    per_call = rm_static_world(tmp_path, engine="vllm", vllm={"python": fake_vllm, "lifetime": "per_call"})
    per_call.respond("mistral", prompts[:1], SAMPLING, seed=11)
    assert per_call._responder is None  # stopped at the end of the call


def test_judges_and_reward_models_read_the_datasets_question_not_the_template(tmp_path):
    """The student reads Vicuna's template (its system line, USER/ASSISTANT turns, </s>); the judge of 01-03 and
    ExPO's reward model read the rm-static dialogue itself."""
    from mfnb import evaluation, expo
    from mfnb.rehearsal.endpoint import JudgeEndpoint, stub_answer

    world = rm_static_world(tmp_path)
    prompt = world.prompts["validation"][0]
    assert prompt.startswith("<s>A chat between") and "</s>" in prompt
    with JudgeEndpoint(stub_answer, key="sk-test") as endpoint, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MFNB_TEST_KEY", "sk-test")
        judge = evaluation.world_judge(world, {"kind": "openai", "model": "gpt-4o", "base_url": endpoint.url,
                                               "api_key_env": "MFNB_TEST_KEY", "cache": False})
        text = judge.render(prompt, "answer a", "answer b")
    assert world.query(prompt) in text and "A chat between" not in text and "</s>" not in text
    rm = expo.reward_judge(world, {"name": "weqweasdas/RM-Mistral-7B"})
    scored, _ = rm.format_text(prompt, "an answer")
    assert "Human: tell me about" in scored and "A chat between" not in scored


def test_a_missing_model_or_gpu_is_named_before_any_training(tmp_path):
    from mfnb.multifidelity import PolicyBackend

    spec = fx.paper_world_spec("02_multifidelity_traces", ROOT, source=str(hub.rm_static(tmp_path / "rm-static")))
    spec["data"].update(n_validation=2, n_test=2)
    spec["roles"]["qwen2"]["model"] = "Qwen/Qwen2-72B-Instruct"  # the third expert: sampled hours into a run
    with pytest.raises(HubModelError, match=r"world.roles.qwen2.model: hub model 'Qwen/Qwen2-72B-Instruct' cannot be "
                                            r"loaded: the hub is offline"):
        PolicyBackend(make_world(spec), "student")
    import torch

    if not torch.cuda.is_available():
        world = make_world({**spec, "device": "cuda"})
        with pytest.raises(ParamsError, match=r"world.device: cuda, but this machine has no GPU .*set world.device: "
                                              r"auto"):
            world.load("student")
