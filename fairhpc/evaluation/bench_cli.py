"""Commands of the policy benchmarks (fairhpc/evaluation/policy_benchmarks.py):

fairhpc alpaca-eval generate   answers of a policy to the AlpacaEval instructions (package format)
fairhpc alpaca-eval judge      alpaca_eval's evaluator with an annotator config -> LC / raw win rate, SE
fairhpc mt-bench fetch         FastChat's MT-Bench files (questions, judge prompts, reference answers)
fairhpc mt-bench generate      two-turn answers of a policy in FastChat's answer format
fairhpc mt-bench judge         FastChat llm_judge single-answer grading -> per-category and overall scores
fairhpc lm-eval                lm-evaluation-harness through its Hugging Face model interface
fairhpc policy-bench-fetch       what the benchmarks of a workflow read, downloaded before offline jobs
fairhpc policy-bench-report       the benchmarks of several runs beside the paper's published numbers
"""

from __future__ import annotations

import json
from pathlib import Path

from fairhpc.errors import ConfigError


def _print(summary: dict) -> int:
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _check(a, policy_option: str | None = None) -> None:
    """Before any data is fetched or model loaded: counts >= 1 and the policy a model directory of a
    policy (a reward model is refused)."""
    from fairhpc.evaluation.scoring import check_model_path, check_model_role

    for name in ("limit", "max_new_tokens", "batch_size", "judge_max_new_tokens", "num_fewshot"):
        v = getattr(a, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v < (0 if name == "num_fewshot" else 1):
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= "
                              f"{0 if name == 'num_fewshot' else 1}, got {v}")
    if policy_option is not None:
        path = getattr(a, policy_option.lstrip("-").replace("-", "_"))
        check_model_path(path, policy_option)
        check_model_role(path, policy_option, "policy")


def _alpaca_generate(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import alpaca_eval_generate

    _check(a, "--policy")
    return _print(alpaca_eval_generate(a.policy, a.out, a.generator, hub_name=a.instructions or None,
                                       instructions_file=a.instructions_file, limit=a.limit,
                                       max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, device=a.device))


def _alpaca_judge(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import alpaca_eval_judge

    return _print(alpaca_eval_judge(a.outputs, a.out, annotator=a.annotator, reference_outputs=a.reference_outputs))


def _mt_fetch(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import fetch_mt_bench

    return _print(fetch_mt_bench(a.out, a.url))


def _mt_generate(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import mt_bench_generate

    _check(a, "--policy")
    return _print(mt_bench_generate(a.policy, a.data_dir, a.answers, a.model_id or a.answers.rsplit("/", 1)[-1][:-6],
                                    limit=a.limit, max_new_tokens=a.max_new_tokens, sampling=a.sampling,
                                    batch_size=a.batch_size, device=a.device, seed=a.seed))


def _mt_judge(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import mt_bench_judge

    _check(a)
    return _print(mt_bench_judge(a.data_dir, a.answers, a.out, judge_model=a.judge, judge_path=a.judge_path,
                                 reference_model=a.reference_model, device=a.device,
                                 judge_max_new_tokens=a.judge_max_new_tokens))


def _lm_eval(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import DEFAULT_LM_EVAL_TASKS, run_lm_eval

    tasks = [t for t in (a.tasks or ",".join(DEFAULT_LM_EVAL_TASKS)).split(",") if t]
    try:
        bs = a.batch_size if a.batch_size == "auto" else int(a.batch_size)
    except ValueError:
        raise ConfigError(f"--batch-size: expected an integer >= 1 or 'auto', got {a.batch_size!r}") from None
    a.batch_size = bs
    _check(a, "--model")
    if a.include_path is not None and not Path(a.include_path).is_dir():
        raise ConfigError(f"--include-path {a.include_path}: no such directory (a folder of lm-eval task YAML files)")
    return _print(run_lm_eval(a.model, tasks, a.out, include_path=a.include_path, batch_size=bs, limit=a.limit,
                              num_fewshot=a.num_fewshot, device=a.device, dtype=a.dtype, seed=a.seed))


def _fetch(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import fetch_for_workflow, workflow_settings
    from fairhpc.io import check_output_dir

    try:
        section = json.loads(a.settings)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--settings: invalid JSON ({e.msg})") from None
    settings = workflow_settings({"policy_benchmarks": section})  # its keys and values, before any download
    check_output_dir(a.out, "--out")
    return _print(fetch_for_workflow(settings, a.out,
                                     download=not a.no_download))


def _report(a) -> int:
    from fairhpc.evaluation.policy_benchmarks import comparison_report

    runs = []
    for spec in a.run:
        parts = dict(p.split("=", 1) for p in spec.split(";") if "=" in p)
        if "name" not in parts:
            raise ConfigError(f"--run {spec!r}: needs name=...; e.g. 'name=dpo;point=dpo_seed0;"
                              "alpaca_eval=RUN/alpaca_eval/summary.json;mt_bench=...;lm_eval=...'")
        parts.setdefault("point", parts["name"])
        runs.append(parts)
    comparison_report(runs, a.out, paper_base=a.paper or None)
    print(Path(a.out).read_text())
    return 0


def _limit(text: str):
    v = float(text)
    if v <= 0:
        raise ConfigError(f"--limit: must be > 0, got {text}")
    return int(v) if v >= 1 else v


def add_commands(sub) -> None:
    p = sub.add_parser("alpaca-eval", help="AlpacaEval 2 through the alpaca-eval package (generate, judge)")
    s = p.add_subparsers(dest="step", metavar="STEP", required=True)
    g = s.add_parser("generate", help="answers of a policy to the AlpacaEval instructions (package format)")
    g.add_argument("--policy", required=True, help="policy model folder (e.g. RUN/final) or hub name")
    g.add_argument("--out", required=True, help="output folder: model_outputs.json, generation.json")
    g.add_argument("--generator", required=True, help="the model's name in the outputs and the leaderboard")
    g.add_argument("--instructions", default="tatsu-lab/alpaca_eval",
                   help="hub data set of the instructions ('' = only --instructions-file)")
    g.add_argument("--instructions-file", default=None,
                   help="local copy of the instructions (JSON list / JSONL with 'instruction'), used when the hub "
                        "set cannot be loaded")
    g.add_argument("--limit", type=int, default=None, help="first N instructions only (LC needs all 805)")
    g.add_argument("--max-new-tokens", type=int, default=2048)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--device", default="auto")
    g.set_defaults(func=_alpaca_generate)
    j = s.add_parser("judge", help="alpaca_eval's evaluator: LC win rate, win rate, standard errors")
    j.add_argument("--outputs", required=True, help="model_outputs.json of `alpaca-eval generate`")
    j.add_argument("--out", required=True, help="output folder: summary.json and the package's files")
    j.add_argument("--annotator", default="weighted_alpaca_eval_gpt4_turbo",
                   help="alpaca_eval annotator config name, or a folder with configs.yaml (local judge)")
    j.add_argument("--reference-outputs", default=None,
                   help="baseline outputs (package format); default: the AlpacaEval 2 baseline from the hub")
    j.set_defaults(func=_alpaca_judge)

    p = sub.add_parser("mt-bench", help="MT-Bench through FastChat's llm_judge (fetch, generate, judge)")
    s = p.add_subparsers(dest="step", metavar="STEP", required=True)
    f = s.add_parser("fetch", help="download FastChat's MT-Bench files into a folder")
    f.add_argument("--out", required=True)
    f.add_argument("--url", default="https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data",
                   help="base URL of FastChat's llm_judge/data folder")
    f.set_defaults(func=_mt_fetch)
    g = s.add_parser("generate", help="two-turn answers of a policy in FastChat's answer format")
    g.add_argument("--policy", required=True)
    g.add_argument("--data-dir", required=True, help="folder with mt_bench/question.jsonl, judge_prompts.jsonl")
    g.add_argument("--answers", required=True, help="answer file <model_id>.jsonl")
    g.add_argument("--model-id", default=None, help="default: the answer file's name")
    g.add_argument("--limit", type=int, default=None)
    g.add_argument("--max-new-tokens", type=int, default=1024)
    g.add_argument("--sampling", default="fastchat", choices=["fastchat", "greedy"],
                   help="fastchat: FastChat's per-category temperatures; greedy: temperature 0 everywhere")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--device", default="auto")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(func=_mt_generate)
    j = s.add_parser("judge", help="FastChat single-answer grading of an answer file")
    j.add_argument("--data-dir", required=True)
    j.add_argument("--answers", required=True)
    j.add_argument("--out", required=True, help="output folder: judgment.jsonl, summary.json")
    j.add_argument("--judge", default="gpt-4", help="API judge model (OPENAI_API_KEY / OPENAI_BASE_URL from the "
                   "environment), or the name of the local judge")
    j.add_argument("--judge-path", default=None, help="local open-weights judge model, run by FastChat")
    j.add_argument("--judge-max-new-tokens", type=int, default=2048)
    j.add_argument("--reference-model", default="gpt-4", help="reference answers mt_bench/reference_answer/<name>")
    j.add_argument("--device", default="auto")
    j.set_defaults(func=_mt_judge)

    p = sub.add_parser("lm-eval", help="lm-evaluation-harness on a policy (Hugging Face model interface)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tasks", default=None, help="comma-separated harness tasks (default: bbq,crows_pairs_english)")
    p.add_argument("--include-path", default=None, help="folder of extra task YAMLs (local-file tasks)")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--limit", type=_limit, default=None, help="examples per task (< 1: a fraction)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_lm_eval)

    p = sub.add_parser("policy-bench-fetch", help="download what the policy benchmarks of a workflow read (submit host)")
    p.add_argument("--settings", required=True, help="the workflow config's policy_benchmarks section (JSON)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-download", action="store_true", help="read the hub cache only (hub.fetch: false)")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("policy-bench-report", help="policy benchmarks of runs beside the paper's published numbers")
    p.add_argument("--run", action="append", required=True,
                   help="'name=N;point=P;alpaca_eval=FILE;mt_bench=FILE;lm_eval=FILE' (summary.json files)")
    p.add_argument("--paper", default=None, choices=["llama3", "qwen2.5"], help="add the paper's reference rows")
    p.add_argument("--out", required=True, help="Markdown file (a .json beside it)")
    p.set_defaults(func=_report)
