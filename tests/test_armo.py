"""ArmoRM end to end on CPU: a random tiny Llama backbone, the planted-attribute synthetic data, real shard
files, the real DeepSpeed engine for the gate, and the final model loaded back as one reward model."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from learning import curve
from safetensors.torch import load_file

from fairhpc import synthetic as syn
from fairhpc.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/runs/armo_tiny.yaml")
# smaller than the demo, same shapes
SMALL = ["data.synthetic.n_train=900", "data.synthetic.n_eval=400", "armo.synthetic_ratings_train=1200",
         "armo.synthetic_ratings_eval=400"]


def run_cli(args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "fairhpc.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """embed (shards 0 and 1 as separate array-like jobs, then the rest resumed), regress, train-armo."""
    root = tmp_path_factory.mktemp("armo")
    emb, reg, run = root / "emb", root / "reg", root / "run"
    common = ["--config", CONFIG, "--out", str(emb), "--num-shards", "4", *SMALL]
    assert main(["armo-embed", "--shard", "0", *common]) == 0
    assert main(["armo-embed", "--shard", "1", *common]) == 0
    shards = emb / "shards"
    before = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.safetensors")}
    assert sorted(before) == ["shard-00000-of-00004.safetensors", "shard-00001-of-00004.safetensors"]
    assert main(["armo-embed", *common]) == 0   # all shards: 0 and 1 done before, 2 and 3 computed, gather
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.safetensors")}
    assert main(["armo-regress", "--config", CONFIG, "--embeddings", str(emb / "embeddings.safetensors"),
                 "--out", str(reg), *SMALL]) == 0
    res = run_cli(["train-armo", "--config", CONFIG, f"armo.embeddings={emb / 'embeddings.safetensors'}",
                   f"armo.regression={reg / 'regression.safetensors'}", f"output_dir={run}", *SMALL])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return {"root": root, "emb": emb, "reg": reg, "run": run, "before": before, "after": after}


def test_embed_resumes_without_recomputing_finished_shards(stages):
    before, after = stages["before"], stages["after"]
    assert len(after) == 4
    for name, stamp in before.items():
        assert after[name] == stamp, f"{name} was written again"
    # a rerun finds every shard done: nothing is rewritten
    emb = stages["emb"]
    assert main(["armo-embed", "--config", CONFIG, "--out", str(emb), "--num-shards", "4", *SMALL]) == 0
    again = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (emb / "shards").glob("shard-*.safetensors")}
    assert again == after


def test_gathered_states_are_the_backbones(stages):
    """The stored states equal a fresh forward of the saved backbone (independent of the shard bookkeeping)."""
    from transformers import AutoModel

    from fairhpc.config import load_config
    from fairhpc.data import render_messages
    from fairhpc.synthetic import armo_synthetic_rows
    from fairhpc.tokenizer import build_tokenizer

    emb = stages["emb"]
    t = load_file(str(emb / "embeddings.safetensors"))
    info = json.loads((emb / "embeddings.json").read_text())
    assert info["counts"] == {"ratings_train": 1200, "ratings_eval": 400, "pairs_train": 900, "pairs_eval": 400}
    cfg = load_config(CONFIG, SMALL, task="armo")
    pairs = armo_synthetic_rows(cfg, "pairs", "eval")
    model = AutoModel.from_pretrained(emb / "backbone").eval()
    tok = build_tokenizer()
    for i in (0, 7, 399):
        ex = pairs[i]
        prompt_text = render_messages(tok, ex["prompt"], add_generation_prompt=True)
        full = render_messages(tok, ex["prompt"] + ex["rejected"])
        ids = tok(full, add_special_tokens=False)["input_ids"]
        # the prompt ends at the first token whose decoded prefix covers the rendered prompt
        n_prompt = next(j + 1 for j in range(len(ids)) if len(tok.decode(ids[:j + 1])) >= len(prompt_text))
        assert tok.decode(ids[:n_prompt]) == prompt_text
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(t["pairs_eval.rejected"][i], hs[-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(t["pairs_eval.prompt"][i], hs[n_prompt - 1], atol=1e-4, rtol=1e-4)


def test_regression_recovers_planted_ratings(stages):
    """Held-out R^2 per objective against its ceiling.  The ratings are the planted levels plus annotator noise
    (+-1 with probability 0.1 each), so no predictor beats the R^2 of the true level itself (computed here on
    the same held-out rows, ~0.9).  The states come from a random (untrained) backbone, whose last-token state
    mixes the words' embeddings nonlinearly; we require at least 60% of the ceiling for every objective and a
    mean R^2 >= 0.7 (measured: 0.64-0.86, mean 0.80).  A regression that ignored the text would score <= 0."""
    from fairhpc.config import load_config
    from fairhpc.synthetic import armo_synthetic_rows

    metrics = json.loads((stages["reg"] / "metrics.json").read_text())
    assert metrics["heldout"] == "ratings_eval"
    cfg = load_config(CONFIG, SMALL, task="armo")
    rows = armo_synthetic_rows(cfg, "ratings", "eval")
    t = load_file(str(stages["emb"] / "embeddings.safetensors"))
    reg = load_file(str(stages["reg"] / "regression.safetensors"))
    pred = (t["ratings_eval.response"].double() @ reg["weight"].double().T + reg["bias"].double()).numpy()
    for k, name in enumerate(metrics["objectives"]):
        y = np.array([r["ratings"][name] if r["ratings"][name] is not None else np.nan for r in rows])
        lv = np.array([r["levels"][name] for r in rows], dtype=float)
        m = ~np.isnan(y)
        sst = ((y[m] - y[m].mean()) ** 2).sum()
        r2 = 1 - ((y[m] - pred[m, k]) ** 2).sum() / sst
        ceiling = 1 - ((y[m] - lv[m]) ** 2).sum() / sst
        assert r2 == pytest.approx(metrics["per_objective"][name]["r2"], abs=1e-4)
        assert 0.85 < ceiling < 0.97, (name, ceiling)
        assert r2 >= 0.6 * ceiling, (name, r2, ceiling)
    assert metrics["r2_mean"] >= 0.7
    assert (stages["reg"] / "regression.png").stat().st_size > 0


def test_decorrelation_brings_every_objective_below_the_threshold(stages):
    from scipy.stats import spearmanr

    from fairhpc.config import ARMO_PENALTIES

    stats = json.loads((stages["run"] / "data_stats.json").read_text())
    dec = stats["decorrelation"]
    names = stats["objectives"]
    v = names.index("verbosity")
    t = load_file(str(stages["emb"] / "embeddings.safetensors"))
    reg = load_file(str(stages["reg"] / "regression.safetensors"))
    ref = torch.cat([t["pairs_train.chosen"], t["pairs_train.rejected"]]).double()
    r = (ref @ reg["weight"].double().T + reg["bias"].double()).numpy()
    lam = np.array(dec["penalties"])
    assert lam[v] == 1.0
    # helpfulness is planted to lean on verbosity: it needs a real penalty
    assert spearmanr(r[:, 0], r[:, v])[0] > 0.3 and lam[0] > 0.3
    for k, name in enumerate(names):
        if k == v:
            continue
        corr = spearmanr(r[:, k] - lam[k] * r[:, v], r[:, v])[0]
        assert corr <= 0.03, (name, corr)
        assert dec["decorrelated"][k]
        # lambda is the smallest candidate that does it
        smaller = [c for c in ARMO_PENALTIES if c < lam[k]]
        for c in smaller:
            assert spearmanr(r[:, k] - c * r[:, v], r[:, v])[0] > 0.03


def test_gated_model_beats_every_single_objective(stages):
    """Held-out pairs whose deciding attribute depends on the prompt's category: the gate must pick the
    attribute per prompt.  Each single objective decides only its own category (~1/3 of the pairs) and guesses
    on the rest, so it stays near 0.5 + 0.45 / 3 ~ 0.65; the Bayes accuracy is ~0.95."""
    summary = json.loads((stages["run"] / "summary.json").read_text())
    ev = summary["eval"]
    best_single = max(ev["objective_accuracy"].values())
    assert best_single < 0.75
    assert ev["accuracy"] >= best_single + 0.1, (ev, curve(stages["run"]))
    assert ev["accuracy"] > ev["uniform_gate_accuracy"] + 0.1, (ev, curve(stages["run"]))
    # the gate puts most weight on the deciding attribute of harmless and honest prompts
    by_cat = ev["gate_mean_by_category"]
    assert max(by_cat["harmless"], key=by_cat["harmless"].get) == "safety"
    assert max(by_cat["honest"], key=by_cat["honest"].get) == "correctness"


def test_final_dir_loads_as_one_reward_model(stages):
    """load_armo scores texts through the backbone again; the result equals the gate on the stored states."""
    from fairhpc.config import load_config
    from fairhpc.rewards.armo import load_armo
    from fairhpc.synthetic import armo_synthetic_rows

    final = stages["run"] / "final"
    marker = json.loads((final / "fairhpc_model.json").read_text())
    assert marker["kind"] == "armo" and marker["backbone"] == "backbone"
    assert (final / "regression.safetensors").is_file() and (final / "backbone" / "config.json").is_file()
    model = load_armo(final, "cpu")
    cfg = load_config(CONFIG, SMALL, task="armo")
    pairs = armo_synthetic_rows(cfg, "pairs", "eval")[:24]
    out = model.score_texts([p["prompt"] for p in pairs], [p["chosen"][0]["content"] for p in pairs])
    assert out["names"] == marker["objectives"]
    assert out["score"].shape == (24,) and out["objectives"].shape == (24, 6) and out["gate"].shape == (24, 6)
    torch.testing.assert_close(out["gate"].sum(1), torch.ones(24))
    t = load_file(str(stages["emb"] / "embeddings.safetensors"))
    reg = load_file(str(stages["reg"] / "regression.safetensors"))
    obj = t["pairs_eval.chosen"][:24] @ reg["weight"].T + reg["bias"]
    torch.testing.assert_close(out["objectives"], obj, atol=1e-4, rtol=1e-4)
    gate = model.gate
    ref = gate(t["pairs_eval.prompt"][:24], t["pairs_eval.chosen"][:24])
    torch.testing.assert_close(out["score"], ref["score"].detach(), atol=1e-4, rtol=1e-4)
    # the score is the learned scale times the gated sum of the decorrelated objectives (recomputed by hand)
    lam = torch.tensor(marker["penalties"])
    dec = obj - lam * obj[:, 5:6]
    manual = gate.logit_scale.detach()[0] * (out["gate"] * dec).sum(1)
    torch.testing.assert_close(out["score"], manual, atol=1e-4, rtol=1e-4)


def test_eval_rm_scores_the_armo_dir(stages, tmp_path):
    """The evaluation dispatch loads the final dir (kind armo) and reproduces the in-training accuracy."""
    from fairhpc.config import load_config

    cfg = load_config(CONFIG, SMALL, task="armo")
    data = tmp_path / "data"
    syn.write_armo_synthetic(data, cfg)
    out = tmp_path / "eval"
    assert main(["eval-rm", "--model", str(stages["run"] / "final"), "--data", str(data / "eval.jsonl"),
                 "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    ev = json.loads((stages["run"] / "summary.json").read_text())["eval"]
    assert s["metrics"]["accuracy"] == pytest.approx(ev["accuracy"], abs=1e-6)
    assert set(s["armo"]["gate_mean_by_category"]) == {"harmless", "helpful", "honest"}


def test_embed_killed_mid_way_resumes_shard_by_shard(tmp_path):
    """SIGKILL the all-shards command after its first shard file appears; the rerun keeps the finished shards
    (same inode and mtime) and computes only the rest; no torn shard is ever read."""
    out = tmp_path / "emb"
    args = ["armo-embed", "--config", CONFIG, "--out", str(out), "--num-shards", "12",
            "data.synthetic.n_train=600", "data.synthetic.n_eval=100", "armo.synthetic_ratings_train=600",
            "armo.synthetic_ratings_eval=0", "armo.ratings_eval=null", "armo.batch_size=8"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen([sys.executable, "-m", "fairhpc.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    shards = out / "shards"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(shards.glob("shard-*.safetensors"))) >= 1:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.safetensors")}
    assert 1 <= len(done) < 12, f"kill came too late: {len(done)} shards"
    assert not (out / "embeddings.safetensors").exists()
    res = run_cli(args)
    assert res.returncode == 0, res.stderr[-3000:]
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in shards.glob("shard-*.safetensors")}
    assert len(after) == 12
    for name, stamp in done.items():
        assert after[name] == stamp
    assert f"{12 - len(done)} shards computed, {len(done)} done before" in res.stdout
    assert (out / "embeddings.safetensors").is_file()


# ------------------------------------------------------------------------------------------ bad inputs
def _rows(n=6):
    return syn.generate_armo_ratings(n, seed=5)


def _write(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("case,expect", [
    ("out_of_range", "line 3: field 'ratings.correctness': rating 7 is out of range [0, 4]"),
    ("all_missing", "line 3: field 'ratings': no rating for any objective"),
    ("unknown_column", "line 3: field 'ratings.humour': unknown rating column"),
    ("not_a_number", "line 3: field 'ratings.safety': expected a number or null, got str"),
    ("no_response", "line 3: field 'response': missing"),
])
def test_bad_ratings_fail_before_anything_is_written(tmp_path, case, expect):
    rows = _rows()
    bad = rows[2]
    if case == "out_of_range":
        bad["ratings"]["correctness"] = 7
    elif case == "all_missing":
        bad["ratings"] = {k: None for k in bad["ratings"]}
    elif case == "unknown_column":
        bad["ratings"]["humour"] = 2
    elif case == "not_a_number":
        bad["ratings"]["safety"] = "high"
    else:
        del bad["response"]
    src = _write(tmp_path / "ratings.jsonl", rows)
    out = tmp_path / "emb"
    res = run_cli(["armo-embed", "--config", CONFIG, "--out", str(out), f"armo.ratings_train={src}",
                   "armo.ratings_eval=null", "data.synthetic.n_train=20", "data.synthetic.n_eval=0",
                   "data.eval=null", f"armo.objectives=[{','.join(syn.ARMO_OBJECTIVES)}]"])
    assert res.returncode == 2, res.stderr
    assert f"fairhpc: data error: {src}: {expect}" in res.stderr
    assert not out.exists()


def test_ratings_eval_with_a_column_the_training_ratings_lack(tmp_path):
    train = _write(tmp_path / "train.jsonl", _rows())
    rows = _rows()
    rows[0]["ratings"]["humour"] = 1
    ev = _write(tmp_path / "eval.jsonl", rows)
    res = run_cli(["armo-embed", "--config", CONFIG, "--out", str(tmp_path / "emb"), f"armo.ratings_train={train}",
                   f"armo.ratings_eval={ev}", "data.synthetic.n_train=20", "data.eval=null"])
    assert res.returncode == 2
    assert f"{ev}: line 1: field 'ratings.humour': unknown rating column" in res.stderr
    assert not (tmp_path / "emb").exists()


def test_helpsteer_columns_with_named_objectives(tmp_path):
    """HelpSteer's form: ratings as top-level columns named by armo.objectives; missing ones masked."""
    from fairhpc.armo.data import load_ratings
    from fairhpc.config import load_config

    rows = [{"prompt": "hi ?", "response": "the clear answer", "helpfulness": 3, "verbosity": 1, "id": 1},
            {"prompt": "hi ?", "response": "a vague answer", "helpfulness": None, "verbosity": 4}]
    src = _write(tmp_path / "hs.jsonl", rows)
    cfg = load_config(None, ["armo.objectives=[helpfulness,correctness,verbosity]"], task="armo")
    rated, names = load_ratings(src, "ratings_train", cfg, list(cfg.armo.objectives), "ratings_train")
    assert names == ["helpfulness", "correctness", "verbosity"]
    assert rated[0].ratings[0] == 3 and math.isnan(rated[0].ratings[1]) and rated[1].ratings[2] == 4
    assert rated[0].prompt == [{"role": "user", "content": "hi ?"}]


def test_gate_refuses_embeddings_of_another_backbone(stages, tmp_path):
    res = run_cli(["train-armo", "--config", CONFIG, f"armo.embeddings={stages['emb'] / 'embeddings.safetensors'}",
                   f"armo.regression={stages['reg'] / 'regression.safetensors'}", f"output_dir={tmp_path / 'r'}",
                   "armo.backbone_seed=1", *SMALL])
    assert res.returncode == 2
    assert "armo.embeddings:" in res.stderr and "holds states of backbone" in res.stderr
    res = run_cli(["train-armo", "--config", CONFIG, f"armo.embeddings={tmp_path / 'none.safetensors'}",
                   f"output_dir={tmp_path / 'r2'}"])
    assert res.returncode == 2 and "armo.embeddings:" in res.stderr and "no such file" in res.stderr


def test_synthetic_armo_rows_are_deterministic_and_plant_what_they_say():
    a, b = syn.generate_armo_pairs(300, seed=3), syn.generate_armo_pairs(300, seed=3)
    assert a == b and json.dumps(a) == json.dumps(b)
    for r in a:
        attr = syn.ARMO_DECIDES[r["category"]]
        assert r["levels_chosen"][attr] != r["levels_rejected"][attr]
        for side in ("chosen", "rejected"):
            words = r[side][0]["content"].split()
            lv = r[f"levels_{side}"]
            up, down = syn.ARMO_WORDS["correctness"]
            assert sum(w in up for w in words) - sum(w in down for w in words) == lv["correctness"] - 2
            assert syn.ARMO_MIN_WORDS + 3 * lv["verbosity"] <= len(words) <= syn.ARMO_MIN_WORDS + 3 * lv["verbosity"] + 2
    ratings = syn.generate_armo_ratings(500, seed=4)
    for r in ratings:
        assert any(v is not None for v in r["ratings"].values())
        for k, v in r["ratings"].items():
            assert v is None or abs(v - r["levels"][k]) <= 1
    # the generic pairs do not change (tests and the demo depend on them)
    assert syn.generate_pairs(3, seed=0) == syn.generate_pairs(3, seed=0)
