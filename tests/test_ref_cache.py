"""The DPO reference log-prob cache is keyed on what determines it and recomputed when that changes."""

import shutil

import pytest
import torch
from test_train import final_state, run_cli

COMMON = ["objective.mode=fc", "objective.beta=0.5", "train.max_steps=3", "data.synthetic.n_train=48",
          "data.synthetic.n_eval=16", "train.micro_batch_size=8", "train.lr=1e-3", "train.save_steps=0",
          "data.max_prompt_length=16"]


def train(out, *extra, planted=None):
    if planted is not None:
        out.mkdir(parents=True)
        shutil.copy(planted, out / "ref_logps_train.pt")
    res = run_cli(["train-dpo", f"output_dir={out}", *COMMON, *extra], timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout + res.stderr


def table(out):
    return torch.load(out / "ref_logps_train.pt", weights_only=False)["table"]


@pytest.mark.slow
def test_a_cache_of_other_tokenization_or_old_format_is_recomputed_and_a_matching_one_reused(tmp_path):
    long = tmp_path / "long"
    train(long, "data.max_length=96")
    clean = tmp_path / "clean"
    train(clean, "data.max_length=32")
    # the same data and model with another max_length: same row count, other values
    stale = tmp_path / "stale"
    log = train(stale, "data.max_length=32", planted=long / "ref_logps_train.pt")
    assert "stale: tokens_sha256" in log
    assert torch.equal(table(stale), table(clean)) and not torch.equal(table(long), table(clean))
    for k, v in final_state(clean).items():
        assert torch.equal(final_state(stale)[k], v), k
    # a bare tensor of the right size (the first version's format) is not trusted either
    bare = tmp_path / "bare.pt"
    torch.save(table(long), bare)
    log = train(tmp_path / "old", "data.max_length=32", planted=bare)
    assert "recomputing the reference log-probs" in log and torch.equal(table(tmp_path / "old"), table(clean))
    # a cache with the same key is used as it is (a recognisably altered copy shows that it was read)
    doctored = torch.load(clean / "ref_logps_train.pt", weights_only=False)
    doctored["table"] = doctored["table"] - 1.0  # both sides shifted: the same margins, other values
    torch.save(doctored, tmp_path / "doctored.pt")
    log = train(tmp_path / "reuse", "data.max_length=32", planted=tmp_path / "doctored.pt")
    assert "recomputing" not in log
    assert torch.equal(table(tmp_path / "reuse"), doctored["table"])
