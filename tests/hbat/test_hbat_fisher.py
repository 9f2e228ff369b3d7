"""The original EWC (HbAT paper, Appendix B): the diagonal empirical Fisher on a 2-parameter toy model with
exact values, the per-element penalty inside the same fused machinery as the modified EWC, the method
preset, its stored Fisher and its refusals."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from mfnb import hbat
from mfnb.core.params import ParamsError
from mfnb.hbat.config import HbatError
from mfnb.hbat.fisher import add_fisher, empirical_fisher, fisher_bytes


class WordTokenizer:
    """x, y, z -> 0, 1, 2; no special tokens (so no EOS is appended)."""

    eos_token_id = None
    vocab = {"x": 0, "y": 1, "z": 2}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.vocab[w] for w in text.split()]}


class TwoParameterLM(torch.nn.Module):
    """Next-token logits [a, b, 0] at every position, whatever the input: two parameters."""

    def __init__(self, a: float = 0.0, b: float = 0.0):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(a))
        self.b = torch.nn.Parameter(torch.tensor(b))
        self.device = torch.device("cpu")

    def forward(self, input_ids):
        logits = torch.stack([self.a, self.b, torch.zeros(())]).expand(*input_ids.shape, 3)
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_fisher_diagonal_exact_on_two_parameters(batch_size):
    # at a = b = 0 every token has p = 1/3; d log p(y) / da = [y = x] - 1/3, d / db = [y = y] - 1/3
    rows = [{"prompt": "x", "completion": " x"},      # grads (2/3, -1/3)
            {"prompt": "x", "completion": " y y"}]    # two tokens: (-1/3 - 1/3, 2/3 + 2/3) = (-2/3, 4/3)
    fisher = empirical_fisher(TwoParameterLM(), WordTokenizer(), rows, "sft", batch_size=batch_size)
    assert fisher["a"].item() == pytest.approx((4 / 9 + 4 / 9) / 2)
    assert fisher["b"].item() == pytest.approx((1 / 9 + 16 / 9) / 2)
    # preference rows use the chosen response, never the rejected one
    prefs = [{"prompt": "x", "chosen": r["completion"], "rejected": " z"} for r in rows]
    dpo = empirical_fisher(TwoParameterLM(), WordTokenizer(), prefs, "dpo", batch_size=batch_size)
    assert dpo["a"].item() == pytest.approx(fisher["a"].item()) and dpo["b"].item() == pytest.approx(fisher["b"].item())


@pytest.mark.parametrize("batch_size", [1, 32])
def test_fisher_at_other_parameters_and_model_state_restored(batch_size):
    model = TwoParameterLM(a=math.log(2.0))          # p = (2/4, 1/4, 1/4)
    model.train()
    fisher = empirical_fisher(model, WordTokenizer(), [{"prompt": "x", "completion": " z"}], "sft",
                              batch_size=batch_size)
    assert fisher["a"].item() == pytest.approx(0.25) and fisher["b"].item() == pytest.approx(1 / 16)
    assert model.training and model.a.grad is None   # mode restored, no gradient left behind


def test_fisher_refuses_empty_data_and_unknown_kind():
    with pytest.raises(HbatError, match="no sft rows"):
        empirical_fisher(TwoParameterLM(), WordTokenizer(), [], "sft")
    with pytest.raises(HbatError, match="kind: expected 'sft' or 'dpo'"):
        empirical_fisher(TwoParameterLM(), WordTokenizer(), [{"prompt": "x", "completion": " x"}], "ppo")


def test_fisher_accumulates_as_a_sum():
    one = {"w": torch.tensor([1.0, 2.0])}
    total = add_fisher(add_fisher(None, one), {"w": torch.tensor([0.5, 0.5])})
    assert total["w"].tolist() == [1.5, 2.5] and one["w"].tolist() == [1.0, 2.0]
    assert fisher_bytes(total) == 8


def test_elementwise_penalty_value_and_gradient():
    torch.manual_seed(0)
    p1, p2 = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))
    f1, f2 = torch.rand(3, 4), torch.rand(5)
    penalty = hbat.EWCPenalty([p1, p2], [f1, f2], ["p1", "p2"])
    assert penalty.elementwise and penalty.state_bytes == 2 * (12 + 5) * 4
    with torch.no_grad():
        p1.add_(0.3)
        p2.mul_(2.0)
    value = penalty()
    assert value.item() == pytest.approx(penalty.reference_value().item(), rel=1e-6)
    value.backward()
    anchors = penalty.anchors
    assert torch.allclose(p1.grad, f1 * (p1.detach() - anchors[0]))
    assert torch.allclose(p2.grad, f2 * (p2.detach() - anchors[1]))
    with pytest.raises(HbatError, match=r"EWC coefficient of tensor 'p1': expected a tensor of shape \(3, 4\)"):
        hbat.EWCPenalty([p1, p2], [torch.rand(4, 3), f2], ["p1", "p2"])


def test_penalty_from_a_fisher_keeps_nonzero_tensors_and_scales_by_lambda():
    model = TwoParameterLM()
    ewc = hbat.EWCParams(importance="fisher", lam=0.5)
    penalty = hbat.EWCPenalty.from_model(model, {"a": torch.tensor(2.0), "b": torch.tensor(0.0)}, ewc)
    assert penalty.names == ["a"] and penalty.coefs[0].item() == 1.0
    inside = hbat.EWCParams(importance="fisher", lam=0.5, lam_placement="inside")
    assert hbat.EWCPenalty.from_model(model, {"a": torch.tensor(2.0)}, inside).coefs[0].item() == 0.5


def test_original_ewc_method_preset():
    params = hbat.for_method(hbat.HbatParams(ewc=hbat.EWCParams(lam=0.01, fmax=50.0)), "HbAT w/ original EWC")
    assert params.ewc.importance == "fisher" and params.ewc.lam == 0.01 and params.ewc.fmax == 50.0
    assert params.constraint == "ewc" and params.n_splits == 2
    assert hbat.for_method(hbat.HbatParams(), "HbAT").ewc.importance == "changes"
    for importance in ("fisher", "uniform"):
        with pytest.raises(ParamsError, match=f"importance '{importance}' is a penalty that does not rank tensors; "
                                              "constraint 'freeze' needs importance 'changes'"):
            hbat.HbatParams.validate_mapping({"constraint": "freeze", "ewc": {"importance": importance}})
    with pytest.raises(ParamsError, match="ewc.importance"):
        hbat.HbatParams.validate_mapping({"ewc": {"importance": "hessian"}})


def test_stage_keys_keep_the_modified_ewc_and_separate_the_fisher():
    from mfnb.hbat.store import stage_key

    modified = hbat.HbatParams()
    original = hbat.for_method(modified, "HbAT w/ original EWC")
    rows = [{"prompt": "p", "completion": "c"}]
    assert stage_key("prev", "sft", 0, rows, modified, 0, "none") == stage_key("prev", "sft", 0, rows, original, 0, "none")
    assert stage_key("prev", "dpo", 0, rows, modified, 0, "ewc") != stage_key("prev", "dpo", 0, rows, original, 0, "ewc")


def test_fisher_scaled_to_the_modified_ewcs_mean_weight():
    from mfnb.hbat.fisher import scaled_fisher

    fisher = {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([0.0, 0.0, 2.0, 2.0])}   # mean 8 / 6
    scaled = scaled_fisher(fisher, hbat.EWCParams(importance="fisher", fisher_scale="fmax", fmax=100.0))
    factor = (100.0 / 2) / (8 / 6)                                                      # fmax / #tensors
    assert scaled["a"].tolist() == pytest.approx([factor, 3 * factor])
    assert sum(float(v.sum()) for v in scaled.values()) / 6 == pytest.approx(50.0)
    raw = scaled_fisher(fisher, hbat.EWCParams(importance="fisher"))   # the paper's original EWC: as estimated
    assert raw["b"].tolist() == [0.0, 0.0, 2.0, 2.0]


def test_batched_fisher_equals_the_loop_on_the_tiny_world(tiny_world):
    model, tokenizer = tiny_world.load("student")
    rows = [{"prompt": p, "completion": " one two" * (1 + i % 3)} for i, p in enumerate(tiny_world.prompts["train"][:12])]
    loop = empirical_fisher(model, tokenizer, rows, "sft", batch_size=1)
    batched = empirical_fisher(model, tokenizer, rows, "sft", batch_size=5)
    assert set(loop) == set(batched) and len(loop) == len(list(model.parameters()))
    for name in loop:
        assert torch.allclose(loop[name], batched[name], rtol=1e-4, atol=1e-7), name


def _reference_fisher(model, tokenizer, rows, kind="sft", max_length=512):
    """The diagonal empirical Fisher written out: one backward per example, squares summed in float32."""
    from mfnb.hbat.fisher import RESPONSE_KEY, _example_ids, response_log_prob

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named.items()}
    model.eval()
    for row in rows:
        ids, prompt_length = _example_ids(tokenizer, row["prompt"], row[RESPONSE_KEY[kind]], max_length)
        if len(ids) <= prompt_length:
            continue
        grads = torch.autograd.grad(response_log_prob(model, ids, prompt_length), list(named.values()), allow_unused=True)
        for n, g in zip(named, grads):
            if g is not None:
                total[n] += g.float() * g.float()
    return {n: t / len(rows) for n, t in total.items()}


def test_fisher_on_a_tiny_llama_equals_the_written_out_estimate(tiny_world):
    model, tokenizer = tiny_world.load("student")
    rows = [{"prompt": p, "completion": " one two" * (1 + i % 3)} for i, p in enumerate(tiny_world.prompts["train"][:6])]
    expected = _reference_fisher(model, tokenizer, rows)
    loop = empirical_fisher(model, tokenizer, rows, "sft", batch_size=1)
    batched = empirical_fisher(model, tokenizer, rows, "sft", batch_size=4)
    assert set(loop) == set(expected)
    for name in loop:
        assert torch.equal(loop[name], expected[name]), name               # the same arithmetic, exactly
        assert torch.allclose(batched[name], expected[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("batch_size", [1, 2])
def test_fisher_keeps_one_float32_accumulator_per_tensor(batch_size, monkeypatch):
    """One zeros accumulator per parameter for the whole estimate (not one more per batch), divided in place:
    the returned tensors are those accumulators."""
    made = []
    zeros_like = torch.zeros_like

    def counting(*args, **kwargs):
        made.append(zeros_like(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch, "zeros_like", counting)
    rows = [{"prompt": "x", "completion": " x"}, {"prompt": "x", "completion": " y y"}, {"prompt": "x", "completion": " z"}]
    fisher = empirical_fisher(TwoParameterLM(), WordTokenizer(), rows, "sft", batch_size=batch_size)
    assert len(made) == 2 and all(t.dtype == torch.float32 for t in made)
    assert {t.data_ptr() for t in made} == {t.data_ptr() for t in fisher.values()}
