"""The policy benchmarks through their own packages on tiny local models, offline: AlpacaEval 2 (alpaca-eval,
judge = a tiny model run by the package's huggingface_local_completions), MT-Bench (FastChat's llm_judge, judge =
a tiny model run by FastChat's local inference), lm-evaluation-harness (hf model, a task on a local file)."""

from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("alpaca_eval")
pytest.importorskip("fastchat")
pytest.importorskip("lm_eval")

from test_policy_benchmarks_helpers import (
    INSTRUCTIONS,
    LM_TASK,
    QUESTIONS,
    alpaca_eval_files,
    constant_rating_judge,
    first_letter_judge_config,
    lm_eval_task_dir,
    mt_bench_dir,
    tiny_causal_lm,
)

from fairhpc.errors import ConfigError, DataError
from fairhpc.evaluation import bench_cli
from fairhpc.evaluation import policy_benchmarks as pb


def cli(argv: list[str]) -> int:
    """The commands of fairhpc/evaluation/bench_cli.py, parsed and run as `fairhpc` does."""
    import argparse

    parser = argparse.ArgumentParser(prog="fairhpc")
    bench_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_commands_registered():
    from fairhpc import cli as main_cli

    assert "fairhpc.evaluation.bench_cli" in main_cli.COMMAND_MODULES

# no network in these tests: every test (and every process it starts) runs offline; not set at import, where it
# would leak into the other test files that pytest collects into the same process
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Offline for the whole module: set before the module-scoped fixtures below run (a function-scoped
    fixture would come after them), and the hub never waited on."""
    import datasets
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE.items():
            mp.setenv(k, v)
        mp.setenv("OMP_NUM_THREADS", "1")
        # both libraries read the variable once, at import (already done by this module's imports)
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        mp.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"policy": tiny_causal_lm(root / "policy", 0), "reference": tiny_causal_lm(root / "reference", 1),
            "random_judge": tiny_causal_lm(root / "random_judge", 2, hidden_size=64, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=128, num_hidden_layers=2),
            "rating_judge": constant_rating_judge(root / "judge_model")}


# ------------------------------------------------------------------------------------------ AlpacaEval
@pytest.fixture(scope="module")
def alpaca_run(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("alpaca")
    inst = alpaca_eval_files(root / "data")
    for name in ("policy", "reference"):
        assert cli(["alpaca-eval", "generate", "--policy", str(models[name]), "--out", str(root / name),
                    "--generator", f"tiny-{name}", "--instructions-file", str(inst), "--max-new-tokens", "8",
                    "--device", "cpu"]) == 0
    judge = first_letter_judge_config(root / "judges", models["random_judge"])
    assert cli(["alpaca-eval", "judge", "--outputs", str(root / "policy/model_outputs.json"),
                "--reference-outputs", str(root / "reference/model_outputs.json"), "--annotator", str(judge),
                "--out", str(root / "judged")]) == 0
    return root


def test_alpaca_eval_outputs_in_package_format(alpaca_run):
    from alpaca_eval.utils import load_or_convert_to_dataframe

    df = load_or_convert_to_dataframe(alpaca_run / "policy/model_outputs.json")
    assert list(df["instruction"]) == INSTRUCTIONS
    assert set(df["generator"]) == {"tiny-policy"} and set(df["dataset"]) == {"helpful_base"}
    assert df["output"].map(lambda s: isinstance(s, str)).all()
    gen = json.loads((alpaca_run / "policy/generation.json").read_text())
    assert gen["n"] == len(INSTRUCTIONS) and not gen["full_official_set"]
    assert gen["instructions"].endswith("alpaca_eval.json")  # the hub is offline: the local-file fallback


def test_alpaca_eval_scores_are_the_packages(alpaca_run):
    """Win rate and standard error of the summary = those of the package's leaderboard.csv and of its
    annotations.json recomputed independently (preference 1 = reference wins, 2 = policy wins, 1.5 tie)."""
    import pandas as pd

    s = json.loads((alpaca_run / "judged/summary.json").read_text())
    board = pd.read_csv(s["leaderboard_csv"], index_col=0)
    assert board.loc["tiny-policy", "win_rate"] == pytest.approx(s["win_rate"])
    ann = json.loads((alpaca_run / "judged/alpaca_eval_work/annotations.json").read_text())
    assert len(ann) == len(INSTRUCTIONS)
    prefs = [a["preference"] for a in ann if a["preference"] is not None and not math.isnan(a["preference"])]
    assert prefs and all(p in (1.0, 1.5, 2.0) for p in prefs)
    wins = [p - 1 for p in prefs]
    n = len(wins)
    mean = sum(wins) / n
    assert s["n_total"] == n and s["n_unjudged"] == len(INSTRUCTIONS) - n
    assert s["win_rate"] == pytest.approx(100 * mean)
    sem = (sum((w - mean) ** 2 for w in wins) / (n - 1)) ** 0.5 / n ** 0.5 if n > 1 else float("nan")
    assert s["standard_error"] == pytest.approx(100 * sem, nan_ok=True)
    # the raw completions of the tiny judge decided the preferences through the package's regex parser
    assert all(isinstance(a["preference_raw_completion"], str) for a in ann)
    # offline, the package's length-controlled GLM cannot get its hub file: reported as unavailable, with why
    if s["length_controlled_winrate"] is None:
        assert s["lc_unavailable_reason"]
    else:
        assert 0 <= s["length_controlled_winrate"] <= 100


def test_alpaca_eval_official_instruction_set():
    """Our loader gives the official 805 instructions, the same first and last as the package's own loader."""
    from alpaca_eval import constants

    try:
        official = constants.get_alpaca_eval_data("alpaca_eval")
    except Exception as e:  # noqa: BLE001 - any error: the set is not in the local hub cache
        import datasets
        from huggingface_hub import constants as hub

        pytest.skip(f"AlpacaEval's official set ({pb.ALPACA_EVAL_HUB}, config alpaca_eval) is not in the local "
                    f"Hugging Face cache ({type(e).__name__}; hub cache {hub.HF_HUB_CACHE}, datasets cache "
                    f"{datasets.config.HF_DATASETS_CACHE}). To run this check: on a machine with hub access, "
                    f"python -c \"import datasets; datasets.load_dataset('{pb.ALPACA_EVAL_HUB}', 'alpaca_eval')\" "
                    "(or fairhpc policy-bench-fetch for a workflow), then with the same HF_HOME: "
                    "pytest tests/test_policy_benchmarks.py -k official_instruction_set")
    rows, source = pb.load_alpaca_eval_instructions()
    assert source.startswith("hub:")
    assert len(rows) == len(official) == pb.ALPACA_EVAL_SIZE
    assert rows[0]["instruction"] == official[0]["instruction"]
    assert rows[-1]["instruction"] == official[-1]["instruction"]


def test_alpaca_eval_bad_inputs(tmp_path, models):
    with pytest.raises(DataError, match="no local file given"):
        pb.load_alpaca_eval_instructions(pb.ALPACA_EVAL_HUB, None)
    bad = tmp_path / "inst.jsonl"
    bad.write_text('{"instruction": "a"}\n{"prompt": "b"}\n')
    with pytest.raises(DataError, match=r"inst.jsonl: record 2"):
        pb.load_alpaca_eval_instructions(None, str(bad))
    cfg = first_letter_judge_config(tmp_path / "j", models["random_judge"])
    (cfg / "configs.yaml").write_text((cfg / "configs.yaml").read_text().replace(
        "    do_sample: false\n", "    do_sample: false\n    api_key: sk-123\n"))
    with pytest.raises(ConfigError, match="credentials are not read from configs"):
        pb.resolve_annotator(str(cfg))
    with pytest.raises(ConfigError, match="neither a local config nor one of alpaca_eval's"):
        pb.resolve_annotator("no_such_annotator")


# ------------------------------------------------------------------------------------------ MT-Bench
@pytest.fixture(scope="module")
def mt_run(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    data = mt_bench_dir(root / "data")
    answers = root / "answers/tiny-policy.jsonl"
    assert cli(["mt-bench", "generate", "--policy", str(models["policy"]), "--data-dir", str(data),
                "--answers", str(answers), "--max-new-tokens", "8", "--device", "cpu"]) == 0
    assert cli(["mt-bench", "judge", "--data-dir", str(data), "--answers", str(answers), "--out",
                str(root / "judged"), "--judge", "tiny-judge", "--judge-path", str(models["rating_judge"]),
                "--judge-max-new-tokens", "8", "--device", "cpu"]) == 0
    return root


def test_mt_bench_answers_in_fastchat_format(mt_run):
    from fastchat.llm_judge.common import load_model_answers

    answers = load_model_answers(str(mt_run / "answers"))
    assert set(answers) == {"tiny-policy"}
    got = answers["tiny-policy"]
    assert sorted(got) == sorted(q["question_id"] for q in QUESTIONS)
    for a in got.values():
        assert a["model_id"] == "tiny-policy" and len(a["choices"][0]["turns"]) == 2 and a["answer_id"]


def test_mt_bench_fastchat_judgments_and_scores(mt_run):
    """The judge (taught to answer [[7]]) graded every turn of every question through FastChat's single-answer
    grading; the summary's means are the judgment file's, recomputed here."""
    from fastchat.llm_judge.common import NEED_REF_CATS, load_single_model_judgments

    rows = [json.loads(x) for x in (mt_run / "judged/judgment.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(QUESTIONS)
    templates = {(r["question_id"], r["turn"]): r["judge"][1] for r in rows}
    for q in QUESTIONS:
        math_cat = q["category"] in NEED_REF_CATS
        assert templates[(q["question_id"], 1)] == ("single-math-v1" if math_cat else "single-v1")
        assert templates[(q["question_id"], 2)].endswith("multi-turn")
    math_prompt = next(r["user_prompt"] for r in rows if r["question_id"] == 111 and r["turn"] == 2)
    assert "Reference: 7" in math_prompt and "Reference: 12" in math_prompt  # FastChat put the references in
    loaded = load_single_model_judgments(str(mt_run / "judged/judgment.jsonl"))
    assert sum(len(v) for v in loaded.values()) == len(rows)
    s = json.loads((mt_run / "judged/summary.json").read_text())
    ok = [r["score"] for r in rows if r["score"] != -1]
    assert s["n_judgments"] == len(rows) and s["n_parse_failures"] == len(rows) - len(ok)
    assert len(ok) >= len(rows) - 1  # the taught judge's answers parse
    assert s["score"] == pytest.approx(sum(ok) / len(ok))
    assert s["score"] == pytest.approx(7.0)
    for cat in {q["category"] for q in QUESTIONS}:
        ids = {q["question_id"] for q in QUESTIONS if q["category"] == cat}
        vals = [r["score"] for r in rows if r["question_id"] in ids and r["score"] != -1]
        assert s["per_category"][cat] == pytest.approx(sum(vals) / len(vals))


def test_mt_bench_parse_failures_counted(mt_run, models):
    """An untaught judge writes no [[rating]]: FastChat scores -1, counted as parse failures, no mean."""
    s = pb.mt_bench_judge(str(mt_run / "data"), str(mt_run / "answers/tiny-policy.jsonl"),
                          str(mt_run / "judged_random"), judge_model="random", judge_path=str(models["random_judge"]),
                          device="cpu", judge_max_new_tokens=4)
    rows = [json.loads(x) for x in (mt_run / "judged_random/judgment.jsonl").read_text().splitlines()]
    failed = sum(r["score"] == -1 for r in rows)
    assert s["n_parse_failures"] == failed and s["n_judgments"] == len(rows) == 6
    if failed == len(rows):
        assert s["score"] is None and sum(s["parse_failures_per_category"].values()) == 6


def test_mt_bench_api_judge_needs_key_from_environment(mt_run, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="set OPENAI_API_KEY"):
        pb.mt_bench_judge(str(mt_run / "data"), str(mt_run / "answers/tiny-policy.jsonl"), str(mt_run / "x"),
                          judge_model="gpt-4")
    assert not (mt_run / "x").exists()


def test_mt_bench_bad_data(tmp_path):
    d = mt_bench_dir(tmp_path / "d")
    (d / "mt_bench/reference_answer/gpt-4.jsonl").write_text("")
    with pytest.raises(DataError, match=r"no reference answer for question\(s\) \[111\]"):
        pb.load_mt_bench(str(d))
    with pytest.raises(ConfigError, match="question.jsonl not found"):
        pb.load_mt_bench(str(tmp_path / "none"))


# ------------------------------------------------------------------------------------------ lm-eval
def test_lm_eval_local_task_matches_direct_loglikelihoods(models, tmp_path):
    """The harness's hf model on a local-file task: its per-choice log-likelihoods equal the tiny policy's,
    computed here with transformers, and its accuracy is the argmax rule on them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tasks = lm_eval_task_dir(tmp_path / "tasks")
    assert cli(["lm-eval", "--model", str(models["policy"]), "--tasks", "fairhpc_tiny_mc", "--include-path",
                str(tasks), "--out", str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu",
                "--dtype", "float32"]) == 0
    s = json.loads((tmp_path / "out/summary.json").read_text())
    samples = [json.loads(x) for x in (tmp_path / "out/samples_fairhpc_tiny_mc.jsonl").read_text().splitlines()]
    assert s["n_samples"]["fairhpc_tiny_mc"] == len(LM_TASK) == len(samples)
    tok = AutoTokenizer.from_pretrained(models["policy"])
    model = AutoModelForCausalLM.from_pretrained(models["policy"]).eval()
    correct = 0
    for smp in sorted(samples, key=lambda r: r["doc_id"]):
        doc = LM_TASK[smp["doc_id"]]
        ctx = f"Question: {doc['question']}\nAnswer:"
        lls = []
        for choice in doc["choices"]:
            c_ids = tok(ctx, add_special_tokens=True).input_ids
            full = tok(ctx + " " + choice, add_special_tokens=True).input_ids
            cont = full[len(c_ids):]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
            lls.append(sum(logp[len(c_ids) - 1 + i, t].item() for i, t in enumerate(cont)))
        harness = [r[0][0] if isinstance(r[0], list) else r[0] for r in smp["resps"]]
        assert harness == pytest.approx(lls, abs=1e-3)
        correct += int(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
    assert s["metrics"]["fairhpc_tiny_mc"]["acc,none"] == pytest.approx(correct / len(LM_TASK))


def test_lm_eval_default_tasks_known_and_unknown_refused(models, tmp_path):
    from lm_eval.tasks import TaskManager

    known = TaskManager().all_tasks
    assert all(t in known for t in pb.DEFAULT_LM_EVAL_TASKS)
    with pytest.raises(ConfigError, match="unknown to the harness: no_such_task"):
        pb.run_lm_eval(str(models["policy"]), ["no_such_task"], str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ report
def test_comparison_report_reads_scores_back(alpaca_run, mt_run, tmp_path):
    out = tmp_path / "report.md"
    assert cli(["policy-bench-report", "--paper", "llama3", "--out", str(out), "--run",
                (f"name=tiny-fr;point=fr_alpha0.1_tau-1_seed0;alpaca_eval={alpaca_run}/judged/summary.json;"
                f"mt_bench={mt_run}/judged/summary.json")]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    ae = json.loads((alpaca_run / "judged/summary.json").read_text())
    row = data["rows"][0]
    assert row["mode"] == "fr" and row["mt_bench"] == pytest.approx(7.0)
    assert row["alpaca_eval_wr"] == pytest.approx(ae["win_rate"])
    text = out.read_text()
    assert "| paper (llama3, FR) | fr | paper (published, reference) | 20.48 |" in text
    assert "| paper (llama3, DPO) | dpo | paper (published, reference) | 16.71 |" in text
    assert "6.58" in text and "reproduced" in text
    assert "sk-" not in text and os.environ.get("OPENAI_API_KEY", "unset") not in text


# ------------------------------------------------------------------------------------------ workflow
def _demo_plan(extra: dict | None = None):
    from pathlib import Path

    import yaml

    from fairhpc import workflow as wf

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config.yaml").read_text())
    cfg.update(yaml.safe_load((repo / "configs/workflows/policy_benchmarks.yaml").read_text()))
    cfg.update(extra or {})
    return cfg, wf.plan(cfg, repo)


def test_workflow_settings_and_runs():
    cfg, plan = _demo_plan()
    s = pb.workflow_settings(cfg)
    assert s["mt_bench"]["judge_path"].endswith("dpo_seed0/final") and s["mt_bench"]["reference_model"] == "gpt-4"
    assert s["alpaca_eval"]["limit"] is None and s["resources"]["generate"]["launcher"] == "local"
    runs = pb.benchmark_runs(plan, s)
    assert sorted(r.point for r in runs) == ["dpo_seed0", "fr_alpha0.1_tau-1_seed0"]
    assert pb.workflow_settings({}) == {} and pb.benchmark_runs(plan, {}) == []
    with pytest.raises(ConfigError, match="policy_benchmarks.grids: no grid named nope"):
        pb.benchmark_runs(plan, {**s, "grids": ["nope"]})
    with pytest.raises(ConfigError, match=r"policy_benchmarks.mt_bench.judge_api_key: credentials"):
        pb.workflow_settings({"policy_benchmarks": {"mt_bench": {"judge_api_key": "sk-1"}}})
    with pytest.raises(ConfigError, match="policy_benchmarks.alpaca_eval.annotater: unknown key"):
        pb.workflow_settings({"policy_benchmarks": {"alpaca_eval": {"annotater": "x"}}})


def test_paper_grid_runs_the_benchmarks():
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    grid = yaml.safe_load((repo / "configs/grids/dpo.yaml").read_text())
    s = pb.workflow_settings(grid)
    assert s["alpaca_eval"]["enabled"] and s["mt_bench"]["enabled"] and s["lm_eval"]["enabled"]
    assert set(pb.DEFAULT_LM_EVAL_TASKS) <= set(s["lm_eval"]["tasks"])
    assert s["paper_reference"] == {"llama3-sft": "llama3", "qwen2.5-sft": "qwen2.5"}
    assert s["resources"]["generate"]["gpus"] >= 1
    text = (repo / "configs/grids/dpo.yaml").read_text()
    assert "did not publish their Qwen2.5 SFT model" in text and "Qwen/Qwen2.5-7B-Instruct" in text
