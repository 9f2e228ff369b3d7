"""Table 2's off-the-shelf pairs: full-weight extrapolation of two model folders, sampled and cached per alpha, the
extrapolated folder gone afterwards; the pair checks; the paper's Table 2 and Table 3 as references."""
from __future__ import annotations

import json
import math

import pytest

from mfnb.core.params import ParamsError
from mfnb.expo import extrapolate
from mfnb.expo import off_the_shelf as ots
from mfnb.models import SamplingParams, generate, load_model, load_tokenizer
from mfnb.rehearsal import stand_ins


class FolderWorld:
    """The little of a world Table 2 uses: roles, their folders and identities."""

    kind = "folders"

    def __init__(self, folders):
        self.folders = folders
        self.roles = list(folders)

    def folder(self, role):
        return self.folders[role]

    def identity(self, role):
        return {"folder": str(self.folders[role])}


@pytest.fixture(scope="module")
def pair_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    sft = stand_ins.save_model(root / "sft", stand_ins.ZEPHYR, seed=0, hidden=32, layers=1)
    aligned = stand_ins.save_model(root / "aligned", stand_ins.ZEPHYR, seed=1, hidden=32, layers=1)
    return FolderWorld({"sft": sft, "aligned": aligned})


SAMPLING = SamplingParams(max_new_tokens=6, temperature=0.7, top_p=0.9, top_k=40, batch_size=4)
PROMPTS = ["tell me about rain", "and cats?"]


def test_pair_responses_extrapolate_sample_cache_and_clean_up(pair_world, tmp_path, monkeypatch):
    pair = ots.OffTheShelfPair(name="zephyr-7b-beta", sft_role="sft", aligned_role="aligned", alphas=[0.5],
                               dtype="float32")
    work = tmp_path / "work"
    got = ots.pair_responses(pair_world, pair, [0.0, 0.5], PROMPTS, SAMPLING, seeds=[0, 1], device="cpu", work=work)
    assert set(got) == {0.0, 0.5} and all(len(got[a][s]) == 2 for a in got for s in (0, 1))
    assert not [p for p in work.iterdir() if p.is_dir()]  # no extrapolated model left behind
    # the same responses as sampling the folder extrapolate() writes, and the aligned folder itself at alpha 0
    made = extrapolate(pair_world.folder("sft"), pair_world.folder("aligned"), 0.5, tmp_path / "made", progress=False)
    for alpha, folder in ((0.5, made), (0.0, pair_world.folder("aligned"))):
        model = load_model(folder, dtype="float32", show_progress=False)
        assert generate(model, load_tokenizer(folder), PROMPTS, SAMPLING, seed=1, show_progress=False) == got[alpha][1]
    assert got[0.5][0] != got[0.0][0]  # the stand-ins differ, so extrapolating moves the model
    monkeypatch.setattr("mfnb.models.load_model", lambda *a, **k: pytest.fail("loaded although cached"))
    assert ots.pair_responses(pair_world, pair, [0.5, 0.0], PROMPTS, SAMPLING, seeds=[1], device="cpu",
                              work=work) == {0.5: {1: got[0.5][1]}, 0.0: {1: got[0.0][1]}}


def test_pairs_are_checked_against_the_world(pair_world):
    good = ots.OffTheShelfPair(name="a", sft_role="sft", aligned_role="aligned", alphas=[0.3, 0.1])
    assert good.alphas == [0.1, 0.3]
    ots.check_pairs(pair_world, [good])
    with pytest.raises(ParamsError, match=r"'off_the_shelf\[1\].aligned_role' \(b\): 'dpo' is not a role"):
        ots.check_pairs(pair_world, [good, good.model_copy(update={"name": "b", "aligned_role": "dpo"})])
    with pytest.raises(ParamsError, match=r"pair names must be distinct"):
        ots.check_pairs(pair_world, [good, good])

    class NoFolders:
        kind, roles = "tiny", ["sft", "aligned"]

    with pytest.raises(ParamsError, match=r"world kind 'tiny' has no model folders"):
        ots.check_pairs(NoFolders(), [good])
    with pytest.raises(ValueError, match="alphas must be distinct"):
        ots.OffTheShelfPair(name="a", sft_role="s", aligned_role="t", alphas=[0.1, 0.1])


def test_a_pair_that_cannot_be_extrapolated_names_itself(pair_world, tmp_path):
    world = FolderWorld({"sft": tmp_path / "missing", "aligned": pair_world.folder("aligned")})
    pair = ots.OffTheShelfPair(name="tulu-2-dpo-7b", sft_role="sft", aligned_role="aligned", alphas=[0.5])
    with pytest.raises(ots.ExpoError, match=r"^off_the_shelf 'tulu-2-dpo-7b' \(sft -> aligned\): weak model folder "
                                            r".*missing' does not exist"):
        ots.pair_responses(world, pair, [0.5], PROMPTS, SAMPLING, device="cpu", work=tmp_path / "w")


def test_the_papers_table2_and_its_alphas():
    paper = ots.paper_table2()
    assert paper[("zephyr-7b-beta", False)]["paper_lc_win_rate"] == pytest.approx(0.132)
    assert paper[("zephyr-7b-beta", True)]["paper_lc_win_rate"] == pytest.approx(0.14)
    assert paper[("Starling-LM-7B-beta", True)]["paper_reward"] == 7.40
    assert ots.paper_alpha("zephyr-7b-alpha") == 0.3 and ots.paper_alpha("nothing") is None
    assert len(paper) == 16 and not any(math.isnan(v) for row in paper.values() for v in row.values())
    assert json.dumps(sorted(n for n, _ in paper)) is not None
