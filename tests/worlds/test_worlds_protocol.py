"""The world as a parameter: make_world's registry and errors, capabilities that fail naming the field,
the tiny world's protocol answers (respond = its model's samples), and that method modules and notebooks
construct no concrete world."""
from __future__ import annotations

import ast
import json

import pytest

from mfnb import evaluation, expo
from mfnb import multifidelity as mf
from mfnb.core import paths
from mfnb.core.params import ParamsError
from mfnb.models import SamplingParams, generate
from mfnb.worlds import KINDS, World, has, make_world, require
from mfnb.worlds.tiny.world import TinyWorld, TinyWorldParams

ROOT = paths.project_root()
SAMPLING = SamplingParams(max_new_tokens=16)


class BareWorld:
    """A world with the core protocol only: no known quality, no capabilities."""

    kind = "bare"
    key = "bare-0"
    prompts = {"train": [f"t{i}" for i in range(50)], "validation": [f"v{i}" for i in range(10)],
               "test": [f"z{i}" for i in range(10)]}
    roles = ["student", "g1"]
    costs = {"student": 1.0, "g1": 1.0}
    quality = None

    def __init__(self):
        self.calls = []

    def build(self, show_progress=True):
        return {}

    def load(self, role):
        raise AssertionError("expert responses must come from respond(), not load()")

    def respond(self, role, prompts, sampling, seed=0, *, show_progress=False):
        self.calls.append((role, tuple(prompts), seed))
        return [f"{role}:{p}:{seed}" for p in prompts]

    def describe(self, role):
        return f"{role} of a bare world"

    def parameters(self, role):
        return None

    def identity(self, role):
        return {"world": self.key, "role": role}


def test_make_world_builds_registered_kinds_and_names_bad_fields(monkeypatch):
    world = make_world({"kind": "tiny", "seed": 0})
    assert isinstance(world, TinyWorld) and world.kind == "tiny" and world.key == TinyWorld().key
    assert isinstance(world, World) and make_world(world) is world
    assert make_world(TinyWorldParams(seed=0)).key == world.key
    with pytest.raises(ParamsError, match=r"world\.kind: missing; known kinds: \['paper', 'smol', 'tiny'\]"):
        make_world({"seed": 0})
    with pytest.raises(ParamsError, match=r"world: parameter 'seed'"):
        make_world({"kind": "tiny", "seed": "zero"})
    with pytest.raises(ParamsError, match=r"world: unknown parameter 'sed'"):
        make_world({"kind": "tiny", "sed": 0})
    with pytest.raises(ParamsError, match=r"world: expected a mapping"):
        make_world("tiny")
    monkeypatch.setitem(KINDS, "bare", lambda values, source: BareWorld())
    assert isinstance(make_world({"kind": "bare"}), BareWorld)
    with pytest.raises(ParamsError, match=r"world\.kind: unknown kind 'mars'; known kinds: \['bare', 'paper', 'smol', 'tiny'\]"):
        make_world({"kind": "mars"})


def test_require_names_the_capability_the_field_and_the_notebook():
    bare, tiny = BareWorld(), TinyWorld()
    assert not has(bare, "quality") and not has(bare, "conflict") and has(tiny, "quality") and has(tiny, "conflict")
    with pytest.raises(ParamsError, match=r"^world kind 'bare' has no preference_pairs \(ExPO's preference pairs; "
                                          r"needed by notebook 03: preference\.source\)$"):
        require(bare, "preference_pairs", field="preference.source", notebook="03")
    assert require(tiny, "quality", field="judge.kind") == tiny.quality


def test_oracle_judge_needs_a_known_quality():
    with pytest.raises(ParamsError, match=r"world kind 'bare' has no quality \(a known quality function; "
                                          r"needed by notebook 01: judge\.kind\)"):
        evaluation.world_judge(BareWorld(), {"kind": "oracle"}, notebook="01")


def test_notebook_schemas_check_the_world_in_their_first_cell(tmp_path):
    import yaml

    from mfnb import hbat

    values = yaml.safe_load((ROOT / "params" / "tiny" / "03_expo_alpha_curves.yaml").read_text())
    params = expo.ExpoParams.validate_mapping(values)
    with pytest.raises(ParamsError, match=r"has no preference_pairs .*notebook 03: preference\.source"):
        params.check_world(BareWorld())
    params.check_world(TinyWorld())  # the tiny world has everything notebook 03 asks for
    bad_role = expo.ExpoParams.validate_mapping({**values, "baseline_role": "g9"})
    with pytest.raises(ParamsError, match=r"parameter 'baseline_role': 'g9' is not a role"):
        bad_role.check_world(TinyWorld())

    values = yaml.safe_load((ROOT / "params" / "tiny" / "04_hbat_ablations.yaml").read_text())
    params = hbat.HbatNotebookParams.validate_mapping(values)
    with pytest.raises(ParamsError, match=r"has no conflict \(HbAT's alignment-tax conflict; needed by notebook 04: "
                                          r"conflict\)"):
        hbat.HbatExperiment(params, world=BareWorld(), store=tmp_path)
    with pytest.raises(ParamsError, match=r"conflict: unknown parameter 'stlye'"):
        hbat.HbatExperiment(params.model_copy(update={"conflict": {"stlye": "."}}), store=tmp_path)
    small = {**values, "conflict": {**values["conflict"], "n_sft": 3}, "n_grid": [1, 2, 4]}
    with pytest.raises(ParamsError, match=r"parameter 'n_grid': N = \[4\] must be between 1 and the smaller data set "
                                          r"\(conflict.n_sft = 3, conflict.n_pref = 1000\)"):
        hbat.HbatExperiment(hbat.HbatNotebookParams.validate_mapping(small), store=tmp_path)


def test_policy_backend_asks_the_world_for_expert_responses():
    world = BareWorld()
    backend = mf.PolicyBackend(world, "student")
    assert backend.key == "bare-0-student" and backend.roles == ["student", "g1"]
    assert backend.prompts.validation == world.prompts["validation"]
    assert backend.generate_expert("g1", ["v1", "v2"], 7, SAMPLING) == ["g1:v1:7", "g1:v2:7"]
    assert world.calls == [("g1", ("v1", "v2"), 7)]


def test_role_responses_come_from_respond_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path))
    world = BareWorld()
    first = evaluation.role_responses(world, "g1", ["v1", "v2"], SAMPLING, seed=3)
    assert first == ["g1:v1:3", "g1:v2:3"]
    assert evaluation.role_responses(world, "g1", ["v1", "v2"], SAMPLING, seed=3) == first
    assert len(world.calls) == 1  # the second call was answered by the cache
    table = evaluation.role_table(world, ["student", "g1"], "validation", SAMPLING)
    assert list(table.columns) == ["role", "cost_per_response", "parameters", "description"]  # no quality known
    assert table["description"].tolist() == ["student of a bare world", "g1 of a bare world"]


def test_tiny_world_answers_the_protocol(tiny_world):
    prompts = tiny_world.prompts["validation"][:12]
    model, tokenizer = tiny_world.load("g2")
    assert tiny_world.respond("g2", prompts, SAMPLING, seed=4) == generate(model, tokenizer, prompts, SAMPLING, seed=4,
                                                                            show_progress=False)
    assert tiny_world.describe("g2") == "habits: repeat, pick" and tiny_world.describe("g3") == "no habits"
    assert tiny_world.identity("student") == {"world": tiny_world.params.key(),
                                              "role": tiny_world.model_path("student").name}
    assert tiny_world.parameters("g1") == sum(p.numel() for p in model.parameters())
    # the multi-fidelity runs keep the identity they had before the world became a parameter
    assert mf.PolicyBackend(tiny_world).key == f"tiny-{tiny_world.params.key()}-student"
    pairs = tiny_world.preference_pairs(["sort these words: fox cat owl . answer:"], "correct_vs_habit")
    assert pairs == [{"prompt": "sort these words: fox cat owl . answer:", "chosen": "cat fox owl",
                      "rejected": "fox cat owl"}]
    with pytest.raises(ParamsError, match="preference.source"):
        tiny_world.preference_pairs([], "other")


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


def test_no_method_module_or_notebook_constructs_a_concrete_world():
    """Only mfnb/worlds knows the concrete worlds: method modules and notebooks go through make_world. (The
    rehearsal stands in for the paper world's hub and judge, so it may know SmolLM2's files.)"""
    package = ROOT / "mfnb"
    for path in package.rglob("*.py"):
        if path.relative_to(package).parts[0] in ("worlds", "rehearsal"):
            continue
        concrete = [m for m in _imports(path) if m.startswith("mfnb.worlds.")
                    and m.split(".")[2] not in ("make_world", "require", "has", "World", "WorldSpec", "KINDS", "register")]
        assert not concrete, f"{path.relative_to(ROOT)} imports {concrete}"
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert "TinyWorld" not in source and "mfnb.worlds.tiny.world" not in source, path.name
        for cell in cells:
            if "parameters" in cell.get("metadata", {}).get("tags", []) and "world" in "".join(cell["source"]):
                builders = ("world = make_world(P.world)", "HbatExperiment(P)", "ExpoExperiment(P)")
                assert any(b in source for b in builders), path.name
