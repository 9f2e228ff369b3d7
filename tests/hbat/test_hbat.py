"""HbAT: importances (Eqs. 6-7, 10) and the EWC penalty (Eqs. 5, 8) on hand-computed cases, the
TRL loss hook, input errors, the stage plan, and a resumable run on a micro model."""
from __future__ import annotations

import math

import pytest
import torch

from mfnb import hbat
from mfnb.core.params import ParamsError
from mfnb.hbat.ewc import _EWCLossMixin


def _softmax(values):
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


# -- importance -----------------------------------------------------------------------------------


def test_tensor_importance_hand_computed():
    before = {"a": torch.zeros(2), "b": torch.zeros(1, 2)}
    after = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[0.0, 2.0]])}
    # C_a = mean(1, 1) = 1, C_b = mean(0, 4) = 2; F = 10 * softmax(1, 2)
    assert hbat.tensor_changes(before, after) == pytest.approx({"a": 1.0, "b": 2.0})
    f = hbat.tensor_importance(before, after, fmax=10.0)
    expected = [10 * p for p in _softmax([1.0, 2.0])]
    assert f["a"] == pytest.approx(expected[0]) and f["b"] == pytest.approx(expected[1])
    assert f["a"] == pytest.approx(10 / (1 + math.e))
    assert sum(f.values()) == pytest.approx(10.0)


def test_tensor_importance_sum_variant_and_scale():
    before = {"a": torch.zeros(2), "b": torch.zeros(1, 2)}
    after = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[0.0, 2.0]])}
    assert hbat.tensor_changes(before, after, reduce="sum") == pytest.approx({"a": 2.0, "b": 4.0})
    f = hbat.tensor_importance(before, after, 1.0, reduce="sum", change_scale=0.5)   # softmax(1, 2) again
    assert f["b"] == pytest.approx(_softmax([1.0, 2.0])[1])
    # the released code's 1e10 scale turns the softmax into an argmax (and stays finite)
    big = hbat.importance_from_changes({"a": 1e-6, "b": 2e-6}, 50.0, change_scale=1e10)
    assert big == {"a": pytest.approx(0.0), "b": pytest.approx(50.0)}
    # realistic unscaled changes give a practically uniform F (Eq. 6 as written)
    flat = hbat.importance_from_changes({"a": 1e-6, "b": 3e-6}, 100.0)
    assert flat["a"] == pytest.approx(50.0, rel=1e-5)


def test_tensor_importance_matches_peft_names():
    before = {"base_model.model.layer.q.base_layer.weight": torch.zeros(3),
              "base_model.model.layer.q.lora_A.default.weight": torch.zeros(2)}
    after = {"layer.q.weight": torch.ones(3), "layer.q.lora_A.default.weight": torch.full((2,), 2.0)}
    changes = hbat.tensor_changes(before, after)
    assert changes == pytest.approx({"layer.q.weight": 1.0, "layer.q.lora_A.default.weight": 4.0})
    assert hbat.canonical_name("base_model.model.m.layers.0.q_proj.base_layer.weight") == "m.layers.0.q_proj.weight"


def test_importance_errors_name_the_problem():
    with pytest.raises(hbat.HbatError, match="fmax"):
        hbat.tensor_importance({"a": torch.zeros(1)}, {"a": torch.ones(1)}, fmax=0.0)
    with pytest.raises(hbat.HbatError, match="only before"):
        hbat.tensor_changes({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
    with pytest.raises(hbat.HbatError, match="shape"):
        hbat.tensor_changes({"a": torch.zeros(1)}, {"a": torch.zeros(2)})


def test_accumulation_and_top_fraction():
    total = hbat.accumulate_changes(None, {"a": 1.0, "b": 2.0})
    total = hbat.accumulate_changes(total, {"a": 0.5, "c": 1.0})
    assert total == {"a": 1.5, "b": 2.0, "c": 1.0}        # Eq. 10
    f = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 0.5, "e": 2.0}
    assert hbat.top_fraction(f, 0.2) == ["b"]            # 20% of 5 tensors
    assert hbat.top_fraction(f, 0.5) == ["b", "c", "e"]  # ceil(2.5)


# -- penalty --------------------------------------------------------------------------------------


def _penalty_case(placement="outside"):
    p1 = torch.tensor([1.0, 2.0], requires_grad=True)
    p2 = torch.tensor([3.0], requires_grad=True)
    ewc = hbat.EWCParams(lam=0.5, fmax=6.0, lam_placement=placement)
    with torch.no_grad():   # anchors at (0, 0) and (1)
        p1.zero_()
        p2.fill_(1.0)
    penalty = hbat.EWCPenalty([p1, p2], [ewc.coefficient(2.0), ewc.coefficient(4.0)], ["p1", "p2"])
    with torch.no_grad():
        p1.copy_(torch.tensor([1.0, 2.0]))
        p2.fill_(3.0)
    return p1, p2, penalty


def test_penalty_value_and_gradient_hand_computed():
    p1, p2, penalty = _penalty_case()
    # (lam/2) * (F1 ||(1,2)||^2 + F2 ||2||^2) = 0.25 * (2*5 + 4*4) = 6.5
    value = penalty()
    assert float(value.detach()) == pytest.approx(6.5)
    value.backward()
    assert p1.grad.tolist() == pytest.approx([1.0, 2.0])   # lam F1 (theta - theta*) = 0.5*2*(1, 2)
    assert p2.grad.tolist() == pytest.approx([4.0])        # 0.5*4*2
    assert float(penalty.reference_value().detach()) == pytest.approx(6.5)


def test_penalty_lambda_inside_the_square():
    _, _, penalty = _penalty_case("inside")
    assert float(penalty().detach()) == pytest.approx(3.25)   # (F/2) ||lam d||^2: lam^2 = 0.25


def test_penalty_fused_matches_autograd_on_random_tensors():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in [(3, 4), (5,), (2, 2, 2)]]
    penalty = hbat.EWCPenalty(params, [0.3, 1.7, 0.01])
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen))
    fused = penalty()
    fused.backward()
    fused_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    plain = penalty.reference_value()
    plain.backward()
    assert float(fused.detach()) == pytest.approx(float(plain.detach()), rel=1e-5)
    for g, p in zip(fused_grads, params):
        torch.testing.assert_close(g, p.grad)


def test_penalty_from_model_skips_negligible_tensors():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    ewc = hbat.EWCParams(fmax=1.0, min_fraction=1e-3)
    f = {"0.weight": 0.9, "0.bias": 0.1, "1.weight": 1e-9, "1.bias": 0.0}
    penalty = hbat.EWCPenalty.from_model(model, f, ewc)
    assert penalty.names == ["0.weight", "0.bias"]
    assert float(penalty().detach()) == 0.0          # anchored where it was built
    assert hbat.EWCPenalty.from_model(model, f, hbat.EWCParams(lam=0.0)).names == []


def test_loss_hook_adds_penalty_once_per_optimizer_step():
    class Base:
        def __init__(self):
            self.args = type("A", (), {"gradient_accumulation_steps": 4, "logging_steps": 1})()
            self.state = type("S", (), {"global_step": 0})()
            self.loss_is_scaled_for_ga = None
            self.model_accepts_loss_kwargs = True
            self.compute_loss_func = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = torch.tensor(1.0)
            return (loss, "outputs") if return_outputs else loss

    class Hooked(_EWCLossMixin, Base):
        pass

    p1, p2, penalty = _penalty_case()
    trainer = Hooked()
    trainer.ewc = penalty
    model = torch.nn.Linear(1, 1).train()
    # a loss already normalised for accumulation (num_items_in_batch given): the penalty is split over 4 micro-batches
    assert float(trainer.compute_loss(model, {}, num_items_in_batch=10).detach()) == pytest.approx(1.0 + 6.5 / 4)
    # an unnormalised loss: the Trainer divides the whole micro-batch loss by 4 itself
    loss, outputs = trainer.compute_loss(model, {}, return_outputs=True)
    assert float(loss.detach()) == pytest.approx(7.5) and outputs == "outputs"
    assert float(trainer.compute_loss(model.eval(), {}).detach()) == 1.0   # evaluation: no penalty


def test_ewc_trainer_classes_subclass_trl():
    from trl import DPOTrainer, SFTTrainer

    assert issubclass(hbat.EWCSFTTrainer, SFTTrainer) and issubclass(hbat.EWCDPOTrainer, DPOTrainer)
    assert hbat.ewc_trainer_class("sft") is hbat.EWCSFTTrainer


# -- inputs, splits, plan -------------------------------------------------------------------------


SFT = [{"prompt": f"sort these words: w{i} . answer:", "completion": " x"} for i in range(4)]
PREF = [{"prompt": f"sort these words: v{i} . answer:", "chosen": " a", "rejected": " b"} for i in range(3)]


def test_bad_inputs_give_errors_naming_the_field():
    with pytest.raises(hbat.HbatError, match=r"n_splits: N = 4 is larger than the smaller data set \(preference_rows: 3"):
        hbat.check_inputs(SFT, PREF, 4)
    with pytest.raises(hbat.HbatError, match="n_splits"):
        hbat.check_inputs(SFT, PREF, 0)
    with pytest.raises(hbat.HbatError, match=r"preference_rows\[0\]: missing field\(s\) \['rejected'\]"):
        hbat.check_inputs(SFT, [{"prompt": "p", "chosen": "a"}], 1)
    other = [dict(r, prompt=r["prompt"].replace(" . answer:", " ? reply:")) for r in PREF]
    with pytest.raises(hbat.HbatError, match="different prompt formats"):
        hbat.check_inputs(SFT, other, 1)
    chat = [dict(r, prompt=[{"role": "user", "content": r["prompt"]}]) for r in PREF]
    with pytest.raises(hbat.HbatError, match="prompt format"):
        hbat.check_inputs(SFT, chat, 1)
    hbat.check_inputs(SFT, PREF, 3)   # fine
    # one set's prompts may share more words than the template ("Write a ..."): not a different format
    chat_sft = [{"prompt": f"<|im_start|>user\nDescribe {w}.<|im_end|>\n", "completion": " x"} for w in "ab"]
    chat_pref = [{"prompt": f"<|im_start|>user\nWrite a {w}.<|im_end|>\n", "chosen": " a", "rejected": " b"} for w in "cd"]
    hbat.check_inputs(chat_sft, chat_pref, 2)


def test_params_reject_bad_values_by_field():
    with pytest.raises(ParamsError, match="'ewc.fmax'"):
        hbat.HbatParams.validate_mapping({"ewc": {"fmax": 0.0}})
    with pytest.raises(ParamsError, match="'ewc.lam'"):
        hbat.HbatParams.validate_mapping({"ewc": {"lam": -1.0}})
    with pytest.raises(ParamsError, match="'n_splits'"):
        hbat.HbatParams.validate_mapping({"n_splits": 0})
    released = hbat.EWCParams.released_code()
    assert (released.reduce, released.change_scale, released.lam_placement) == ("sum", 1e10, "inside")


def test_split_parts_are_disjoint_and_cover():
    rows = list(range(10))
    parts = hbat.split_parts(rows, 3, seed=1)
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    assert sorted(x for p in parts for x in p) == rows
    assert hbat.split_parts(rows, 3, seed=1) == parts


def test_stage_plan_and_methods():
    assert hbat.stage_plan(2) == [("sft", 0), ("dpo", 0), ("sft", 1), ("dpo", 1)]
    assert hbat.stage_plan(1) == [("sft", 0), ("dpo", 0)]
    assert hbat.stage_plan(1, preference=False) == [("sft", 0)]
    base = hbat.HbatParams(n_splits=3)
    assert hbat.for_method(base, "w/o alternating").n_splits == 1
    assert hbat.for_method(base, "w/o EWC").constraint == "none"
    assert hbat.for_method(base, "HbAT-Freeze").constraint == "freeze"
    with pytest.raises(hbat.HbatError, match="method"):
        hbat.for_method(base, "RLHF")
    # the mechanism's controls change only where the penalty's weight goes, nothing else of HbAT
    uniform, released = hbat.for_method(base, "HbAT w/ uniform anchor"), hbat.for_method(base, "HbAT w/ released importance")
    assert uniform.ewc.importance == "uniform" and (released.ewc.reduce, released.ewc.change_scale) == ("sum", 1e10)
    for variant in (uniform, released):
        assert variant.model_copy(update={"ewc": base.ewc}) == base
    assert released.ewc.lam_placement == "outside"   # the released code's importance, not its lambda placement
    from mfnb.hbat.store import stage_key

    keys = {stage_key("p", "dpo", 0, [], p, 0, "ewc") for p in (
        base, uniform, uniform.model_copy(update={"ewc": uniform.ewc.model_copy(update={"fmax": 5.0})}), released)}
    assert len(keys) == 4   # each weighting, and the uniform anchor's strength, its own stages


# -- a whole run on a micro model: constraints, anchors and resume ----------------------------------


def _micro(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def test_run_hbat_resumes_from_store_with_same_importances(tmp_path):
    from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld
    from mfnb.worlds.tiny.task import build_tokenizer

    tokenizer = build_tokenizer()
    world = ConflictWorld(ConflictParams(n_sft=8, n_pref=8))
    from mfnb.worlds.tiny.world import TinyWorldParams, split_prompts

    prompts = split_prompts(TinyWorldParams(n_train=40, n_validation=2, n_test=2))["train"]
    sft_prompts, pref_prompts = world.split_prompts(prompts, 0)
    sft_rows, pref_rows = world.sft_rows(sft_prompts), world.preference_rows(pref_prompts, 0)
    params = hbat.HbatParams.validate_mapping({
        "n_splits": 2, "sft": {"lr": 1e-2, "batch_size": 4, "epochs": 1.0, "warmup_ratio": 0.0},
        "dpo": {"lr": 1e-2, "batch_size": 4, "epochs": 1.0, "warmup_ratio": 0.0},
        "ewc": {"fmax": 10.0, "lam": 1.0}, "select_by": "last"})   # no warm-up: a part's one step trains
    calls = []

    def evaluate(model, tok, split):
        calls.append(split)
        return {"reward": 0.0, "quality": 0.0, "win_rate": 0.0}

    model = _micro(tokenizer)
    first = hbat.run_hbat(model, tokenizer, sft_rows, pref_rows, params, seed=0, store=tmp_path, init_key="micro",
                          evaluate=evaluate, eval_key="e")
    assert [(s.kind, s.constraint) for s in first.stages] == [("sft", "none"), ("dpo", "ewc"), ("sft", "ewc"), ("dpo", "ewc")]
    dpo_stage = first.stages[1]
    assert sum(dpo_stage.importance_used.values()) == pytest.approx(10.0)
    assert set(dpo_stage.importance_used) == set(hbat.trainable_tensors(model))
    final = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # a "killed" run: drop the last stage from the store, resume, and get the same anchors and importances
    (tmp_path / "stages" / first.stages[-1].key / "state.safetensors").unlink()
    calls.clear()
    resumed_model = _micro(tokenizer)
    second = hbat.run_hbat(resumed_model, tokenizer, sft_rows, pref_rows, params, seed=0, store=tmp_path,
                           init_key="micro", evaluate=evaluate, eval_key="e")
    assert [s.reused for s in second.stages] == [True, True, True, False]
    assert calls == ["validation", "test"]          # only the retrained stage is evaluated again
    assert second.stages[-1].importance_used == pytest.approx(first.stages[-1].importance_used)
    for k, v in resumed_model.state_dict().items():
        torch.testing.assert_close(v, final[k], atol=1e-5, rtol=1e-4)

    # the uniform anchor: the modified EWC's total weight spread evenly over the tensors
    model = _micro(tokenizer)
    run = hbat.run_hbat(model, tokenizer, sft_rows, pref_rows, hbat.for_method(params, "HbAT w/ uniform anchor"), seed=0)
    used = run.stages[1].importance_used
    assert set(used) == set(hbat.trainable_tensors(model))
    assert list(used.values()) == pytest.approx([10.0 / len(used)] * len(used)) and sum(used.values()) == pytest.approx(10.0)
    # the released code's importance (summed changes x 1e10 before the softmax) puts all of fmax on one tensor
    run = hbat.run_hbat(_micro(tokenizer), tokenizer, sft_rows, pref_rows,
                        hbat.for_method(params, "HbAT w/ released importance"), seed=0)
    released = sorted(run.stages[1].importance_used.values())
    assert released[-1] == pytest.approx(10.0) and sum(released[:-1]) == pytest.approx(0.0, abs=1e-6)

    # HbAT-Freeze trains with the top 20% tensors frozen, and restores requires_grad afterwards
    freeze = hbat.for_method(params, "HbAT-Freeze")
    model = _micro(tokenizer)
    run = hbat.run_hbat(model, tokenizer, sft_rows, pref_rows, freeze, seed=0)
    frozen = run.stages[1].constrained_tensors
    assert len(frozen) == math.ceil(0.2 * len(hbat.trainable_tensors(model)))
    assert all(run.stages[1].change_sums[name][0] == 0.0 for name in frozen)
    assert all(p.requires_grad for p in model.parameters())


def test_run_hbat_keeps_best_validation_checkpoint_without_store():
    from mfnb.worlds.tiny.conflict import ConflictParams, ConflictWorld
    from mfnb.worlds.tiny.task import build_tokenizer
    from mfnb.worlds.tiny.world import TinyWorldParams, split_prompts

    tokenizer = build_tokenizer()
    world = ConflictWorld(ConflictParams(n_sft=8, n_pref=8))
    prompts = split_prompts(TinyWorldParams(n_train=40, n_validation=2, n_test=2))["train"]
    sft_prompts, pref_prompts = world.split_prompts(prompts, 0)
    params = hbat.HbatParams.validate_mapping({
        "n_splits": 2, "sft": {"lr": 1e-2, "batch_size": 4, "epochs": 1.0},
        "dpo": {"lr": 1e-2, "batch_size": 4, "epochs": 1.0}, "select_by": "reward"})
    rewards = iter([0.1, 0.9, 0.2, 0.3])   # validation after sft0, dpo0, sft1, dpo1
    states = []

    def evaluate(model, tok, split):
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"reward": next(rewards, 0.0)}

    model = _micro(tokenizer)
    run = hbat.run_hbat(model, tokenizer, world.sft_rows(sft_prompts), world.preference_rows(pref_prompts, 0),
                        params, seed=0, evaluate=evaluate)
    assert run.selected == 1                 # the best DPO-stage checkpoint (sft stages are not candidates)
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[1][k])


# -- the penalty follows its parameters (the launched workers: built on CPU, then moved and cast) ----------


def _built_then_moved(dtype, elementwise: bool):
    """A penalty built on a float32 model, the model then cast to ``dtype`` (as DDP / DeepSpeed move and cast
    the workers' parameters after the penalty is built), and moved away from the anchors by 0.5."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    names = ["0.weight", "0.bias", "1.weight"]
    importance = ({n: torch.rand(p.shape) for n, p in model.named_parameters() if n in names} if elementwise
                  else {"0.weight": 2.0, "0.bias": 0.5, "1.weight": 1.0})
    ewc = hbat.EWCParams(lam=0.5, fmax=3.0, importance="fisher" if elementwise else "changes")
    penalty = hbat.EWCPenalty.from_model(model, importance, ewc)
    anchors = {n: p.detach().to(torch.float64) for n, p in model.named_parameters()}
    model.to(dtype)
    assert float(penalty().detach()) == 0.0             # anchored where it was built, as the training sees it
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].add_(0.5)
    coef = {n: (ewc.coefficient(importance[n]).double() if elementwise else ewc.coefficient(importance[n]))
            for n in names}
    moved = {n: params[n].detach().double() - anchors[n].to(params[n].dtype).double() for n in names}
    expected = sum(0.5 * float((coef[n] * moved[n] ** 2).sum()) for n in names)
    expected_grad = {n: coef[n] * moved[n] for n in names}
    return model, penalty, params, names, expected, expected_grad


@pytest.mark.parametrize("elementwise", [False, True])
def test_penalty_follows_its_parameters_to_another_dtype(elementwise):
    model, penalty, params, names, expected, expected_grad = _built_then_moved(torch.float64, elementwise)
    value = penalty()
    assert value.item() == pytest.approx(expected, rel=1e-6)   # the value is summed in float32
    value.backward()
    for n in names:
        assert params[n].grad.dtype == torch.float64
        torch.testing.assert_close(params[n].grad, expected_grad[n].to(torch.float64), rtol=1e-12, atol=0)
    assert all(a.dtype == torch.float64 for a in penalty.anchors)
    if elementwise:
        assert all(c.dtype == torch.float64 for c in penalty.coefs)
    assert params["1.bias"].grad is None                  # a tensor without importance is not penalised


@pytest.mark.parametrize("elementwise", [False, True])
def test_penalty_after_a_cast_to_bf16(elementwise):
    """Parameters cast to bf16 after the penalty was built: the anchors are cast alike (the penalty starts at
    zero instead of at the rounding), and the fused backward returns bf16 gradients."""
    model, penalty, params, names, expected, expected_grad = _built_then_moved(torch.bfloat16, elementwise)
    value = penalty()
    assert value.dtype == torch.float32 and value.item() == pytest.approx(expected, rel=2e-2)
    value.backward()
    for n in names:
        assert params[n].grad.dtype == torch.bfloat16
        torch.testing.assert_close(params[n].grad.double(), expected_grad[n], rtol=2e-2, atol=1e-3)


def test_fused_backward_with_anchors_of_another_dtype():
    """Called directly with float32 anchors on bf16 parameters (and the reverse), the fused functions still
    give each parameter a gradient of its own dtype."""
    from mfnb.hbat.ewc import _FusedElementwisePenalty, _FusedPenalty

    for param_dtype, anchor_dtype in ((torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)):
        p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=param_dtype))
        for coefs, fused in (([2.0], _FusedPenalty), ([torch.full((3,), 2.0, dtype=param_dtype)], _FusedElementwisePenalty)):
            penalty = hbat.EWCPenalty([p], coefs, ["p"])
            penalty.anchors = [torch.zeros(3, dtype=anchor_dtype)]
            p.grad = None
            value = fused.apply(penalty, p)
            assert value.item() == pytest.approx(14.0)        # 1/2 * 2 * (1 + 4 + 9)
            value.backward()
            assert p.grad.dtype == param_dtype and p.grad.tolist() == [2.0, 4.0, 6.0]


# -- where the run store lives, and Table 7 under a launch ---------------------------------------------


def test_run_store_defaults_to_the_cache_not_results(tmp_path, monkeypatch):
    """Stage weights (a full model per stage) are run state: <cache>/runs/<profile>/04_hbat, never results/."""
    monkeypatch.setenv("MFNB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MFNB_RESULTS", str(tmp_path / "results"))
    params = hbat.HbatNotebookParams.for_profile("04_hbat_ablations", "tiny")
    exp = hbat.HbatExperiment(params)
    assert exp.store == tmp_path / "cache" / "runs" / "tiny" / "04_hbat"
    assert not (tmp_path / "results").exists()
    assert hbat.HbatExperiment(params, store=tmp_path / "elsewhere").store == tmp_path / "elsewhere"


def test_table7_trains_under_the_active_launch(monkeypatch):
    """measure_efficiency writes the launch (the params' or the active `launching` block's) into each fresh
    process's params; the process hands it to run_hbat and reports the launched stages' costs."""
    import json

    from mfnb.hbat import efficiency
    from mfnb.training import launch as launcher

    params = hbat.HbatNotebookParams.for_profile("04_hbat_ablations", "tiny")
    specs = []

    def fake_run(cmd, **kwargs):
        specs.append(json.loads(cmd[-1]))
        cost = {"method": specs[-1]["method"], "train_seconds": 1.0, "cpu_seconds": 1.0, "importance_seconds": 0.0,
                "peak_rss_mb": 10.0, "extra_rss_mb": 1.0, "state_mb": 0.0, "cuda_peak_mb": None}
        return type("P", (), {"returncode": 0, "stdout": "COST " + json.dumps(cost), "stderr": ""})()

    monkeypatch.setattr(efficiency.subprocess, "run", fake_run)
    efficiency.measure_efficiency(params, methods=["DPO"])
    assert specs[-1]["params"]["launch"] is None
    with launcher.launching({"processes": 2, "config": "ddp"}):
        efficiency.measure_efficiency(params, methods=["DPO"])
    assert specs[-1]["params"]["launch"] == launcher.LaunchParams(processes=2, config="ddp").model_dump()
    launched = params.model_copy(update={"launch": launcher.LaunchParams(processes=2, config="deepspeed_zero2")})
    efficiency.measure_efficiency(launched, methods=["DPO"])
    assert specs[-1]["params"]["launch"]["config"] == "deepspeed_zero2"

    # the fresh process: its run_hbat gets the launch; launched stages add their world size and workers' costs
    from mfnb.hbat.store import StageRecord

    seen = {}

    class FakeExperiment:
        def __init__(self, params, store=None):
            self.tokenizer = None

        def method_params(self, method, **changes):
            return hbat.for_method(hbat.HbatParams(), method)

        def data(self, seed):
            return [], []

        def load_initial(self):
            return torch.nn.Linear(1, 1)

    def fake_hbat(model, tokenizer, sft_rows, pref_rows, params, *, seed, launch=None):
        seen["launch"] = launch
        stage = StageRecord(index=0, kind="sft", part=0, key="k", rows=1, constraint="none", importance_used={},
                            constrained_tensors=[], change_sums={}, train_seconds=2.0, cpu_seconds=1.0,
                            train_metrics={"world_size": 2, "launch_seconds": 1.5, "cuda_peak_mb": 123.0})
        return hbat.HbatRun(params=params, seed=seed, stages=[stage], selected=0, test=None, accumulated={})

    monkeypatch.setattr(efficiency, "HbatExperiment", FakeExperiment)
    monkeypatch.setattr(efficiency, "run_hbat", fake_hbat)
    printed = []
    monkeypatch.setattr("builtins.print", lambda line: printed.append(line))
    efficiency._cost_worker(json.dumps({**specs[-1], "params": launched.model_dump()}))
    assert seen["launch"] == launched.launch
    cost = json.loads(printed[-1][5:])
    assert cost["world_size"] == 2 and cost["worker_seconds"] == 1.5 and cost["worker_cuda_peak_mb"] == 123.0


def test_table7_memory_is_the_training_processes_where_measured():
    import pandas as pd

    from mfnb.hbat.efficiency import efficiency_table, memory_column

    rows = [{"repeat": 0, "method": m, "train_seconds": t, "cpu_seconds": t, "importance_seconds": 0.0,
             "peak_rss_mb": 500.0, "extra_rss_mb": 1.0, "state_mb": 1.0, "cuda_peak_mb": None}
            for m, t in (("DPO", 1.0), ("HbAT", 2.0))]
    cpu = pd.DataFrame(rows)
    assert memory_column(cpu)[0] == "peak_rss_mb"
    table = efficiency_table(cpu)
    assert "relative_memory" not in table and "cuda_peak_mb" not in table   # a CPU run's table as before
    launched = cpu.assign(world_size=2, worker_seconds=1.0, worker_peak_rss_mb=900.0,
                          worker_cuda_peak_mb=[1000.0, 1500.0])
    assert memory_column(launched) == ("worker_cuda_peak_mb", "peak GPU memory of the training processes")
    table = efficiency_table(launched).set_index("method")
    assert table.loc["HbAT", "relative_memory"] == 1.5 and table.loc["HbAT", "relative_peak_rss"] == 1.0
