"""Bad input to model loading and ExPO gets one message naming the path or the field (issue 9)."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from mfnb.expo import ExpoError, extrapolate_state_dict, lora_extrapolation, scale_lora_adapter
from mfnb.models import LoraParams, ModelLoadError, attach_lora, load_adapter, load_model, load_tokenizer, save_adapter
from mfnb.worlds.tiny.task import build_tokenizer
from mfnb.worlds.tiny.world import TinyWorldParams, _new_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A good tiny Llama folder, a wider one, and a LoRA adapter of the good one."""
    root = tmp_path_factory.mktemp("models")
    tokenizer = build_tokenizer()
    params = TinyWorldParams()
    model = _new_model(params, tokenizer)
    model.save_pretrained(root / "good")
    tokenizer.save_pretrained(root / "good")
    arch = params.arch.model_copy(update={"hidden": params.arch.hidden * 2})
    wide = _new_model(params.model_copy(update={"arch": arch}), tokenizer)
    wide.save_pretrained(root / "wide")
    save_adapter(attach_lora(load_model(root / "good", show_progress=False), LoraParams(r=4, alpha=8)),
                 root / "adapter")
    return root


def _copy(folders, name, tmp_path):
    return shutil.copytree(folders / name, tmp_path / name)


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("name", ["./no-such-model", "models/my-sft", "checkpoints/", "~/no/such/model",
                                  "runs/a/b", "my model/v1"])
def test_folder_like_names_are_missing_folders_not_hub_names(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=f"^model folder not found: {name}"):
        load_model(name)
    with pytest.raises(ModelLoadError, match=f"^model folder not found: {name}"):
        load_tokenizer(name)
    assert time.perf_counter() - start < 2  # never tried on the hub (that takes ~46 s of retries offline)


def test_first_part_an_existing_folder_makes_it_local(monkeypatch, tmp_path):
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"model folder not found: outputs/sft \(relative to {tmp_path}\)"):
        load_model("outputs/sft")


def test_config_wider_than_weights(folders, tmp_path):
    bad = _copy(folders, "good", tmp_path)
    _edit_config(bad, hidden_size=2 * json.loads((bad / "config.json").read_text())["hidden_size"])
    with pytest.raises(ModelLoadError, match=f"folder {bad}: .*config.json disagrees with the shapes") as err:
        load_model(bad, show_progress=False)
    assert err.value.__cause__ is not None


@pytest.mark.parametrize("change, meaning", [(+1, "config.json asks for weights the checkpoint does not have"),
                                             (-1, "the checkpoint has weights config.json has no place for")])
def test_config_with_other_layer_count(folders, tmp_path, change, meaning):
    """transformers only warns here (random or dropped layers); a silently different model is an error."""
    bad = _copy(folders, "good", tmp_path)
    layers = json.loads((bad / "config.json").read_text())["num_hidden_layers"]
    _edit_config(bad, num_hidden_layers=layers + change)
    with pytest.raises(ModelLoadError, match=f"folder {bad}: {meaning} .*model.layers"):
        load_model(bad, show_progress=False)


@pytest.mark.parametrize("keep", [5, 0.5])
def test_truncated_weights_name_the_file(folders, tmp_path, keep):
    bad = _copy(folders, "good", tmp_path)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=f"folder {bad}: SafetensorError: model.safetensors is truncated or "
                                             "corrupt") as err:
        load_model(bad, show_progress=False)
    assert type(err.value.__cause__).__name__ == "SafetensorError"


def test_corrupt_config_json(folders, tmp_path):
    bad = _copy(folders, "good", tmp_path)
    (bad / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ModelLoadError, match=f"cannot load model from folder {bad}: .*config.json"):
        load_model(bad, show_progress=False)


@pytest.mark.parametrize("text, detail", [('{"r": 4, ', "Expecting property name"),
                                          ("[1, 2]", "expected a JSON object")])
def test_corrupt_adapter_config(folders, tmp_path, text, detail):
    bad = _copy(folders, "adapter", tmp_path)
    (bad / "adapter_config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=f"corrupt LoRA adapter config {bad}/adapter_config.json: {detail}"):
        load_adapter(load_model(folders / "good", show_progress=False), bad)


def test_lora_of_the_wrong_shape(folders):
    wide = folders / "wide"
    with pytest.raises(ModelLoadError, match=f"cannot load LoRA adapter {folders / 'adapter'} onto base model "
                                             f"{wide}: RuntimeError: size mismatch for .*lora_A") as err:
        load_adapter(load_model(wide, show_progress=False), folders / "adapter")
    assert isinstance(err.value.__cause__, RuntimeError)


def test_truncated_adapter_weights(folders, tmp_path):
    bad = _copy(folders, "adapter", tmp_path)
    (bad / "adapter_model.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ModelLoadError, match=f"cannot load LoRA adapter {bad} onto base model"):
        load_adapter(load_model(folders / "good", show_progress=False), bad)


# ----------------------------------------------------------------------------------------- ExPO alpha

WEAK = {"w": torch.tensor([1.0, -2.0])}
STRONG = {"w": torch.tensor([2.0, -1.0])}


@pytest.mark.parametrize("alpha", [True, False, "0.5", b"1", None, [0.5]])
def test_alpha_must_be_a_real_number(alpha, folders):
    with pytest.raises(ExpoError, match=r"^alpha must be a finite number \(int or float\), got "):
        extrapolate_state_dict(WEAK, STRONG, alpha)
    model = load_adapter(load_model(folders / "good", show_progress=False), folders / "adapter", trainable=False)
    with pytest.raises(ExpoError, match="^alpha must be a finite number"):
        with lora_extrapolation(model, alpha):
            pass
    with pytest.raises(ExpoError, match="^factor must be a finite number"):
        scale_lora_adapter(model, alpha)


def test_alpha_numpy_and_int_are_fine():
    np = pytest.importorskip("numpy")
    for alpha in (np.float32(0.5), np.int64(1), 1):
        out = extrapolate_state_dict(WEAK, STRONG, alpha)
        assert torch.equal(out["w"], STRONG["w"] + float(alpha) * (STRONG["w"] - WEAK["w"]))


def test_alpha_overflow_names_alpha():
    with pytest.raises(ExpoError, match=r"^alpha=1e\+39 overflows: ExPO computes in float32"):
        extrapolate_state_dict(WEAK, STRONG, 1e39)
    big = {"w": torch.tensor([1e10, 0.0])}
    with pytest.raises(ExpoError, match=r"^alpha=1e\+30 overflows 'w': .* leaves the range of float32"):
        extrapolate_state_dict(WEAK, big, 1e30)
    assert torch.equal(big["w"], torch.tensor([1e10, 0.0]))  # inputs untouched


# ----------------------------------------------------------------------------------------- parameters

from mfnb.bounds import HoeffdingParams  # noqa: E402
from mfnb.core import paths  # noqa: E402
from mfnb.core.params import ParamsError, load_yaml, parse_value  # noqa: E402
from mfnb.multifidelity import TracesParams  # noqa: E402

TINY02 = paths.project_root() / "params" / "tiny" / "02_multifidelity_traces.yaml"


def _write(tmp_path, text, name="02_multifidelity_traces.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_scientific_notation_without_dot_is_a_number(tmp_path):
    text = TINY02.read_text()
    assert "epsilon: 0.0001" in text
    path = _write(tmp_path, text.replace("epsilon: 0.0001", "epsilon: 1e-4").replace("lr: 0.0005", "lr: 5E-4"))
    params = TracesParams.from_yaml(path)
    assert params.epsilon == 1e-4 and params.dpo.lr == 5e-4
    assert [parse_value(v) for v in ("1e-4", "5E3", "1.5e3", "-2e-1", "0.5", "true", "null", "[a, 1]", "tiny", "1e")] \
        == [1e-4, 5e3, 1.5e3, -0.2, 0.5, True, None, ["a", 1], "tiny", "1e"]


def test_number_as_string_says_how_to_write_it():
    """Plain papermill reads -f files with PyYAML, where 1e-4 is a string: the schema says how to write it."""
    values = load_yaml(TINY02)
    with pytest.raises(ParamsError, match=r"f.yaml: parameter 'epsilon': .*\(got '1e-4'\); YAML reads 1e-4 as a "
                                          r"string: write 1.0e-4"):
        TracesParams.validate_mapping({**values, "epsilon": "1e-4"}, "f.yaml")
    with pytest.raises(ParamsError, match=r"parameter 'dpo.lr': .*write 5.0e\+3"):
        TracesParams.validate_mapping({**values, "dpo": {**values["dpo"], "lr": "5e3"}}, "f.yaml")
    with pytest.raises(ParamsError, match=r"parameter 'gamma': .*write 0.5 without quotes"):
        TracesParams.validate_mapping({**values, "gamma": "0.5"}, "f.yaml")


def test_unknown_keys_suggest_the_field_also_nested():
    values = load_yaml(TINY02)
    with pytest.raises(ParamsError, match=r"^f.yaml: unknown parameter 'gama' \(did you mean 'gamma'\?\)$"):
        TracesParams.validate_mapping({**values, "gama": 0.5}, "f.yaml")
    with pytest.raises(ParamsError, match=r"^f.yaml: unknown parameter 'dpo.betta' \(did you mean 'beta'\?\)$"):
        TracesParams.validate_mapping({**values, "dpo": {**values["dpo"], "betta": 0.5}}, "f.yaml")


def test_profile_must_be_known(tmp_path):
    path = _write(tmp_path, TINY02.read_text().replace("profile: tiny", "profile: tinyy"))
    with pytest.raises(ParamsError, match=rf"{path}: parameter 'profile': .*must be one of tiny, smol, paper "
                                          r"\(did you mean 'tiny'\?\) \(got 'tinyy'\)"):
        TracesParams.from_yaml(path)


@pytest.mark.parametrize("text, message", [
    ("", "the params file is empty"),
    ("# only a comment\n", "the params file is empty"),
    ("gamma: [0.3\nprofile: tiny\n", r"not valid YAML at line 2, column 8: while parsing a flow sequence"),
    ("gamma: 0.3\n  delta: 0.1\n", "not valid YAML at line 2, column 8: mapping values are not allowed here"),
    ("gamma: 0.3\ndelta: 0.1\ngamma: 0.5\n", r"not valid YAML at line 3, column 1: key 'gamma' is given twice "
                                             r"\(first on line 1\)"),
    ("- gamma\n- delta\n", "expected a mapping of parameter names to values, got a list"),
])
def test_bad_files_name_the_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ParamsError, match=rf"^{path}: {message}"):
        TracesParams.from_yaml(path)


def _notebook_globals(values, cells, **extra):
    """What a Jupyter kernel's globals look like at the from_namespace call: values, imports, history."""
    import numpy

    return {**values, **extra, "np": numpy, "In": ["", *cells], "Out": {}, "_ih": cells, "get_ipython": print}


def test_from_namespace_refuses_injected_unknown_names():
    values = load_yaml(paths.project_root() / "params" / "tiny" / "05_hoeffding_bounds.yaml")
    own = "# Parameters (papermill overrides these)\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    current = "import numpy as np\nP = bounds.HoeffdingParams.from_namespace(globals())"
    ns = _notebook_globals(values, [own, "# Parameters\ngama = 0.5\nn_reps = 10\n", current],
                           gama=0.5, START=1.0)
    with pytest.raises(ParamsError, match=r"^parameters injected by papermill \(-p / -f\): unknown parameter 'gama' "
                                          r"\(did you mean 'gamma'\?\)\n\(this notebook's parameters: profile, seed"):
        HoeffdingParams.from_namespace(ns)
    # a typo typed into the notebook's own parameters cell is refused too, naming the cell
    ns = _notebook_globals(values, [own + "\nseeed = 1", current], seeed=1)
    with pytest.raises(ParamsError, match=r"^parameters cell: unknown parameter 'seeed' \(did you mean 'seed'\?\)"):
        HoeffdingParams.from_namespace(ns)


def test_from_namespace_ignores_other_variables_of_an_interactive_session():
    """Variables of the same cell (START = ...), of later cells run before a rerun, of scratch cells, and of an
    earlier version of the parameters cell are not parameters."""
    values = load_yaml(paths.project_root() / "params" / "tiny" / "05_hoeffding_bounds.yaml")
    own = "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items())
    cells = [own + "\nseeed = 1", own, "radii = [0.1, 0.05]\nns = np.unique([1, 2])", "x = 1",
             "START = time.perf_counter()\nP = bounds.HoeffdingParams.from_namespace(globals())"]
    ns = _notebook_globals(values, cells, seeed=1, radii=[0.1], x=1, START=2.0, _private=3)
    assert HoeffdingParams.from_namespace(ns).seed == values["seed"]


def test_from_namespace_on_a_plain_mapping_checks_every_data_value():
    values = load_yaml(paths.project_root() / "params" / "tiny" / "05_hoeffding_bounds.yaml")
    import numpy

    assert HoeffdingParams.from_namespace({**values, "np": numpy, "HoeffdingParams": HoeffdingParams}).gamma == 0.3
    with pytest.raises(ParamsError, match=r"^parameters cell: unknown parameter 'n_rep' \(did you mean 'n_reps'\?\)"):
        HoeffdingParams.from_namespace({**values, "n_rep": 5})
