"""The in-process reward-model evaluation (what the training engine calls at the end of RM training) writes
exactly what ``fairhpc eval-rm`` writes for the saved model: one code path, the same files and numbers."""

import json

import pytest

TINY = ["model.tiny.hidden_size=16", "model.tiny.num_hidden_layers=2", "model.tiny.num_attention_heads=2",
        "model.tiny.num_key_value_heads=1", "model.tiny.intermediate_size=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it (config.yaml, final/) and the model and tokenizer in memory."""
    import torch
    import yaml

    from fairhpc import layout
    from fairhpc.config import load_config, to_dict
    from fairhpc.models import build_tiny_reward_model
    from fairhpc.tokenizer import load_tokenizer

    run = layout.RunDir(tmp_path_factory.mktemp("runs") / "rm-fr")
    cfg = load_config(overrides=[f"output_dir={run.root}", "objective.mode=fr", "objective.tau=0.5",
                                 "data.synthetic.n_eval=24", "data.max_length=96", "data.max_prompt_length=48",
                                 *TINY], task="rm")
    run.root.mkdir(parents=True)
    run.config.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = build_tiny_reward_model(cfg.model.tiny, tok)
    model.save_pretrained(run.final)
    tok.save_pretrained(run.final)
    model.train()  # as the engine holds it at the end of training
    return run, cfg, model, tok


def test_in_process_eval_equals_the_cli_on_the_saved_model(run_dir):
    from test_eval_benchmarks import run

    from fairhpc.evaluation.reward import evaluate_reward_model

    rd, cfg, model, tok = run_dir
    inproc = rd.eval_dir("eval_inprocess")
    summary = evaluate_reward_model(model, tok, "synthetic", inproc.root, run_cfg=cfg, batch_size=4)
    assert model.training  # the engine's model is handed back in training mode
    cli = rd.eval_dir()
    assert run(["eval-rm", "--model", rd.final, "--data", "synthetic", "--out", cli.root, "--batch-size", "4"]) == 0
    # the same bytes: every reward, metric and recorded setting (model = RUN/final by default)
    assert inproc.summary.read_text() == cli.summary.read_text()
    assert inproc.per_example.read_text() == cli.per_example.read_text()
    assert summary == json.loads(cli.summary.read_text())
    assert summary["model"] == str(rd.final) and summary["data"] == "synthetic"
    assert summary["taus"] == [0.5, -1.0]  # the run's tau first, then Jain's index
    assert summary["metrics"]["n"] == 24 and summary["max_length"] == cfg.data.max_length
    rows = [json.loads(x) for x in cli.per_example.read_text().splitlines()]
    margins = [r["margin"] for r in rows]
    assert len(set(margins)) == 24  # real, distinct rewards: an untrained model still ranks pairs
    assert summary["metrics"]["accuracy"] == pytest.approx(sum(m > 0 for m in margins) / 24)


def test_in_process_eval_checks_data_before_scoring(run_dir, tmp_path):
    from fairhpc.errors import ConfigError, DataError
    from fairhpc.evaluation.reward import evaluate_reward_model

    _, cfg, model, tok = run_dir
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a"}\n')
    with pytest.raises(DataError, match=rf"{bad}: line 1: field 'rejected': missing"):
        evaluate_reward_model(model, tok, str(bad), tmp_path / "o", run_cfg=cfg)
    with pytest.raises(ConfigError, match="--taus: tau = 1"):
        evaluate_reward_model(model, tok, "synthetic", tmp_path / "o", run_cfg=cfg, taus=[1.0])
    assert not (tmp_path / "o").exists()
