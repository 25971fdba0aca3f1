"""The paper's policy benchmarks, each run by its own tool: AlpacaEval 2 (``alpaca-eval``), MT-Bench (FastChat's
``llm_judge``, ``fschat``) and lm-evaluation-harness (``lm-eval``).  Install them with ``pip install -e .[bench]``.

AlpacaEval 2   the official 805 instructions (hub ``tatsu-lab/alpaca_eval``, loaded as the package loads them,
               or a local copy) answered by the policy (greedy, its chat template), written in the package's
               model-outputs format (a JSON list of {instruction, output, generator, dataset}); judged by
               ``alpaca_eval.main.evaluate`` with an annotator config: one of the package's (API judges, e.g.
               ``weighted_alpaca_eval_gpt4_turbo``, the AlpacaEval 2 default) or a directory with a
               ``configs.yaml`` of the package's format (e.g. ``fn_completions: huggingface_local_completions``
               for an open-weights judge on the cluster).  The length-controlled win rate, the raw win rate and
               their standard errors are the package's; when its length-controlled GLM cannot run (its
               ``df_gamed.csv`` is not in the hub cache, or the fit fails on a small set) the summary gives the
               raw numbers, ``length_controlled_winrate: null`` and the reason.
MT-Bench       the 80 two-turn questions (FastChat's ``question.jsonl``), answers of the policy in FastChat's
               answer format (turn 2 sees turn 1 and the policy's answer to it), single-answer grading by
               FastChat's ``llm_judge`` (its judge prompts, its matches, its rating parser, its judgment file);
               the judge is an OpenAI-compatible API model (key and base URL from the environment) or a local
               model loaded and run by FastChat's own model adapters (``fastchat.model.load_model``,
               ``fastchat.serve.inference.generate_stream``).  Scores per category and turn, overall, and the
               number of judgments whose rating could not be parsed (FastChat's score -1, left out of means).
lm-eval        ``lm_eval.simple_evaluate(model="hf", model_args="pretrained=PATH,...")`` on a task list
               (default: its ``bbq`` and ``crows_pairs_english``), any harness task by name, and task YAMLs of
               a local folder (``include_path``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import urllib.request
from pathlib import Path

from fairhpc.errors import ConfigError, DataError
from fairhpc.io import atomic_write_json, atomic_write_text

ALPACA_EVAL_HUB = "tatsu-lab/alpaca_eval"
ALPACA_EVAL_SIZE = 805
DEFAULT_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
# FastChat's MT-Bench files (question.jsonl, judge_prompts.jsonl, reference_answer/gpt-4.jsonl) in its repository;
# the PyPI wheel of fschat does not ship them
MT_BENCH_URL = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data"
MT_BENCH_FILES = ("mt_bench/question.jsonl", "judge_prompts.jsonl", "mt_bench/reference_answer/gpt-4.jsonl")
MT_BENCH_SIZE = 80
DEFAULT_LM_EVAL_TASKS = ("bbq", "crows_pairs_english")
# environment variables that hold judge credentials: read by the judges' clients, never written anywhere
CREDENTIAL_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "AZURE_OPENAI_KEY", "HF_TOKEN")
_SECRET_KEY = re.compile(r"^(.*_)?(api_?key|key|token|secret|password)$", re.IGNORECASE)

# The paper's published numbers (policies trained with DPO, Fairness Regularization, Fairness Coefficient)
PAPER_RESULTS = {
    "llama3": {"dpo": {"alpaca_eval_lc": 16.71, "mt_bench": 6.46},
               "fr": {"alpaca_eval_lc": 20.48, "mt_bench": 6.70},
               "fc": {"alpaca_eval_lc": 21.10, "mt_bench": 6.58}},
    "qwen2.5": {"dpo": {"alpaca_eval_lc": 18.93, "mt_bench": 6.59},
                "fr": {"alpaca_eval_lc": 21.05, "mt_bench": 7.24},
                "fc": {"alpaca_eval_lc": 19.72, "mt_bench": 7.00}},
}


def require(module: str):
    """Import one of the benchmark packages, or a ConfigError that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{module} is not installed ({e}); install the benchmark tools with "
                          "`pip install -e .[bench]`") from None


def check_no_secrets(obj, where: str) -> None:
    """Refuse credentials written into a config: judges read them from the environment only."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if _SECRET_KEY.search(str(k)) and v not in (None, ""):
                raise ConfigError(f"{where}.{k}: credentials are not read from configs; set one of "
                                  f"{', '.join(CREDENTIAL_ENV)} in the environment of the judging job")
            check_no_secrets(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_no_secrets(v, f"{where}[{i}]")


def _read_records(path: Path) -> list[dict]:
    """A JSON list or JSONL file of records (DataError naming file and line)."""
    text = Path(path).read_text()
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of records")
        return rows
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i}: invalid JSON ({e.msg})") from None
    return rows


def _generator(policy: str, device: str):
    from fairhpc.evaluation.policy import load_generator
    from fairhpc.rewards.base import resolve_device

    if not Path(policy).exists() and not ("/" in policy and not policy.startswith((".", "/"))):
        raise ConfigError(f"--policy: no model at {policy}")
    dev = resolve_device(device)
    model, tok = load_generator(policy, dev)
    return model, tok, dev


# ====================================================================================== AlpacaEval 2
def load_alpaca_eval_instructions(hub_name: str | None = ALPACA_EVAL_HUB,
                                  local_file: str | None = None) -> tuple[list[dict], str]:
    """The AlpacaEval instruction set as [{"instruction", "dataset"}] and where it came from.

    First the package's own loader (``alpaca_eval.constants.get_alpaca_eval_data("alpaca_eval")``, i.e.
    ``datasets.load_dataset(hub_name, "alpaca_eval")``, which reads the hub cache offline), then the hub
    file ``alpaca_eval.json`` through ``huggingface_hub`` (cache first), then ``local_file`` (a JSON list
    or JSONL of records with an "instruction" field, e.g. a copy of that file)."""
    tried = []
    if hub_name:
        try:
            constants = require("alpaca_eval.constants")
            if hub_name == ALPACA_EVAL_HUB:
                ds = constants.get_alpaca_eval_data("alpaca_eval")
            else:
                import datasets

                ds = datasets.load_dataset(hub_name, "alpaca_eval")["eval"]
            rows = [{"instruction": r["instruction"], "dataset": r.get("dataset", "")} for r in ds]
            return rows, f"hub:{hub_name} (alpaca_eval loader)"
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - offline, not cached, or datasets without loading scripts
            tried.append(f"alpaca_eval loader: {type(e).__name__}: {str(e)[:160]}")
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(hub_name, "alpaca_eval.json", repo_type="dataset")
            rows = _read_records(Path(path))
            return ([{"instruction": r["instruction"], "dataset": r.get("dataset", "")} for r in rows],
                    f"hub:{hub_name}/alpaca_eval.json")
        except Exception as e:  # noqa: BLE001 - any error of the hub client: try the local file
            tried.append(f"hub file: {type(e).__name__}: {str(e)[:160]}")
    if local_file:
        path = Path(local_file)
        if not path.is_file():
            raise ConfigError(f"instructions_file: file not found: {path}")
        rows = _read_records(path)
        for i, r in enumerate(rows, 1):
            if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"]:
                raise DataError(f"{path}: record {i}: no non-empty 'instruction' string")
        return [{"instruction": r["instruction"], "dataset": r.get("dataset", "")} for r in rows], str(path)
    raise DataError(f"AlpacaEval instructions: not loadable from the hub ({'; '.join(tried)}) and no "
                    "local file given (instructions_file / --instructions-file)")


def alpaca_eval_generate(policy: str, out_dir: str, generator: str, hub_name: str | None = ALPACA_EVAL_HUB,
                         instructions_file: str | None = None, limit: int | None = None,
                         max_new_tokens: int = 2048, batch_size: int = 8, device: str = "auto") -> dict:
    """Answers of ``policy`` to the AlpacaEval instructions -> OUT/model_outputs.json (package format)."""
    from fairhpc.evaluation.policy import generate

    rows, source = load_alpaca_eval_instructions(hub_name, instructions_file)
    official = len(rows) == ALPACA_EVAL_SIZE
    rows = rows[:limit] if limit else rows
    model, tok, dev = _generator(policy, device)
    t0 = time.time()
    texts, lens = generate(model, tok, [[{"role": "user", "content": r["instruction"]}] for r in rows],
                           max_new_tokens=max_new_tokens, batch_size=batch_size, device=dev,
                           desc="AlpacaEval answers")
    records = [{"instruction": r["instruction"], "output": t[0], "generator": generator, "dataset": r["dataset"]}
               for r, t in zip(rows, texts)]
    out = Path(out_dir)
    atomic_write_json(out / "model_outputs.json", records)
    meta = {"policy": str(policy), "generator": generator, "instructions": source, "n": len(records),
            "full_official_set": official and len(records) == ALPACA_EVAL_SIZE,
            "max_new_tokens": max_new_tokens, "mean_new_tokens": sum(x[0] for x in lens) / max(1, len(lens)),
            "seconds": round(time.time() - t0, 2)}
    atomic_write_json(out / "generation.json", meta)
    return meta


def _alpaca_hub_records(config_name: str) -> list[dict]:
    """Records of one configuration of the AlpacaEval hub set: the package's loader, else the hub file
    ``<config_name>.json`` (datasets versions without loading scripts); DataError naming both reasons."""
    try:
        return [dict(r) for r in require("alpaca_eval.constants").get_alpaca_eval_data(config_name)]
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - not cached / no loading scripts: try the plain file
        first = f"{type(e).__name__}: {str(e)[:160]}"
    try:
        from huggingface_hub import hf_hub_download

        return _read_records(Path(hf_hub_download(ALPACA_EVAL_HUB, f"{config_name}.json", repo_type="dataset")))
    except Exception as e:  # noqa: BLE001 - reported with the loader's reason
        raise DataError(f"AlpacaEval {config_name}: not loadable ({first}; hub file: {type(e).__name__}: "
                        f"{str(e)[:160]}); give a local file instead") from None


def _transformers5_compat() -> None:
    """``huggingface_local_completions`` passes ``load_in_8bit=False`` to ``from_pretrained`` on machines
    without CUDA; transformers 5 removed that keyword.  The loader it calls drops a False value (a true one
    is turned into the BitsAndBytesConfig that transformers 5 expects)."""
    import transformers
    from alpaca_eval.decoders import huggingface_local as hl

    if int(transformers.__version__.split(".")[0]) < 5 or getattr(hl.AutoModelForCausalLM, "_fairhpc", False):
        return
    auto = transformers.AutoModelForCausalLM

    class AutoModelForCausalLM:
        _fairhpc = True

        @staticmethod
        def from_pretrained(name, *args, **kwargs):
            if kwargs.pop("load_in_8bit", False):
                kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
            if "torch_dtype" in kwargs:
                dtype = kwargs.pop("torch_dtype")
                if dtype is not None:
                    kwargs["dtype"] = dtype
            return auto.from_pretrained(name, *args, **kwargs)

    hl.AutoModelForCausalLM = AutoModelForCausalLM


def resolve_annotator(annotator: str) -> str:
    """A package annotator name (a folder of alpaca_eval/evaluators_configs) or a local config folder / file."""
    p = Path(annotator)
    if p.exists():
        if p.is_dir() and not (p / "configs.yaml").is_file():
            raise ConfigError(f"annotator: {p} has no configs.yaml (the alpaca_eval annotator config format)")
        check_no_secrets(_yaml(p / "configs.yaml" if p.is_dir() else p), f"annotator {p}")
        return str(p.resolve())
    constants = require("alpaca_eval.constants")
    if not (Path(constants.EVALUATORS_CONFIG_DIR) / annotator).is_dir():
        known = sorted(d.name for d in Path(constants.EVALUATORS_CONFIG_DIR).iterdir() if d.is_dir())
        raise ConfigError(f"annotator: {annotator!r} is neither a local config nor one of alpaca_eval's: "
                          f"{', '.join(known)}")
    return annotator


def _yaml(path: Path):
    from fairhpc.yamlio import load_yaml

    return load_yaml(path)


def alpaca_eval_judge(model_outputs: str, out_dir: str, annotator: str = DEFAULT_ANNOTATOR,
                      reference_outputs: str | None = None) -> dict:
    """Run alpaca_eval's evaluator on ``model_outputs`` -> OUT/summary.json (+ the package's leaderboard.csv
    and annotations.json).  ``reference_outputs``: a file of the baseline's outputs in the same format; None =
    the package's AlpacaEval 2 baseline (gpt4_turbo), restricted to the instructions of ``model_outputs``."""
    main = require("alpaca_eval.main")
    metrics = require("alpaca_eval.metrics")
    import pandas as pd

    annotator = resolve_annotator(annotator)
    mo_path = Path(model_outputs)
    if not mo_path.is_file():
        raise ConfigError(f"--outputs: file not found: {mo_path}")
    ours = _read_records(mo_path)
    for i, r in enumerate(ours, 1):
        missing = {"instruction", "output", "generator"} - set(r)
        if missing:
            raise DataError(f"{mo_path}: record {i}: missing {', '.join(sorted(missing))}")
    if reference_outputs:
        if not Path(reference_outputs).is_file():
            raise ConfigError(f"--reference-outputs: file not found: {reference_outputs}")
        ref = pd.DataFrame(_read_records(Path(reference_outputs)))
        ref_source = str(reference_outputs)
    else:
        ref = pd.DataFrame(_alpaca_hub_records("alpaca_eval_gpt4_baseline"))
        ref_source = f"hub:{ALPACA_EVAL_HUB} alpaca_eval_gpt4_baseline"
    by_inst = {r["instruction"]: i for i, r in ref.iterrows()}
    missing = [r["instruction"] for r in ours if r["instruction"] not in by_inst]
    if missing:
        raise DataError(f"{ref_source}: no reference output for {len(missing)} instruction(s) of {mo_path}, "
                        f"e.g. {missing[0][:80]!r}")
    ref = ref.loc[[by_inst[r["instruction"]] for r in ours]].reset_index(drop=True)
    _transformers5_compat()
    out = Path(out_dir)
    work = out / "alpaca_eval_work"
    work.mkdir(parents=True, exist_ok=True)
    lc_note = {}

    def metric(annotations, **kwargs):
        try:
            return metrics.get_length_controlled_winrate(annotations, save_weights_dir=work / "glm_weights",
                                                         **kwargs)
        except Exception as e:  # noqa: BLE001 - GLM hub file not cached, or no fit on a small set
            lc_note["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            return {**metrics.get_winrate(annotations), "length_controlled_winrate": float("nan")}

    t0 = time.time()
    board, annotations = main.evaluate(
        model_outputs=pd.DataFrame(ours), reference_outputs=ref, annotators_config=annotator,
        output_path=work, precomputed_leaderboard=None, is_return_instead_of_print=True, fn_metric=metric,
        is_cache_leaderboard=False, caching_path=work / "annotation_cache.json")
    name = ours[0]["generator"]
    row = board.loc[name].to_dict()
    prefs = [a.get("preference") for a in annotations]

    def num(key):
        v = row.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    summary = {
        "benchmark": "alpaca_eval_2", "generator": name, "annotator": str(annotator), "reference": ref_source,
        "length_controlled_winrate": num("length_controlled_winrate"),
        "lc_standard_error": num("lc_standard_error"),
        "win_rate": num("win_rate"), "standard_error": num("standard_error"),
        "discrete_win_rate": num("discrete_win_rate"),
        "n_wins": num("n_wins"), "n_wins_base": num("n_wins_base"), "n_draws": num("n_draws"),
        "n_total": num("n_total"), "avg_length": num("avg_length"),
        "n_instructions": len(ours),
        # instructions the judge gave no usable preference for (the package leaves them out of n_total)
        "n_unjudged": len(ours) - int(num("n_total") or 0),
        "n_annotations": len(prefs),
        "full_official_set": len(ours) == ALPACA_EVAL_SIZE,
        "lc_unavailable_reason": lc_note.get("reason"),
        "leaderboard_csv": str(work / "leaderboard.csv"), "annotations": str(work / "annotations.json"),
        "seconds": round(time.time() - t0, 2),
    }
    if summary["length_controlled_winrate"] is None and not lc_note:
        summary["lc_unavailable_reason"] = "alpaca_eval returned no length-controlled win rate"
    atomic_write_json(out / "summary.json", summary)
    return summary


# ====================================================================================== MT-Bench
def fetch_mt_bench(out_dir: str, base_url: str = MT_BENCH_URL) -> dict:
    """Download FastChat's MT-Bench files into ``out_dir`` (same layout); a missing file is a DataError."""
    out = Path(out_dir)
    got = {}
    for rel in MT_BENCH_FILES:
        url = f"{base_url.rstrip('/')}/{rel}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                text = r.read().decode()
        except Exception as e:  # noqa: BLE001 - any network error, reported with the URL
            raise DataError(f"MT-Bench: cannot download {url}: {e}") from None
        atomic_write_text(out / rel, text)
        got[rel] = sum(1 for line in text.splitlines() if line.strip())
    if got["mt_bench/question.jsonl"] != MT_BENCH_SIZE:
        raise DataError(f"{out / 'mt_bench/question.jsonl'}: {got['mt_bench/question.jsonl']} questions, "
                        f"MT-Bench has {MT_BENCH_SIZE}")
    atomic_write_json(out / "fetched.json", {"source": base_url, "files": got, "time": time.time()})
    return got


def load_mt_bench(data_dir: str, reference_model: str = "gpt-4") -> tuple[list[dict], dict, dict]:
    """(questions, judge prompts, reference answers by question id) of an MT-Bench data folder, read by
    FastChat's own loaders."""
    common = require("fastchat.llm_judge.common")
    d = Path(data_dir)
    qfile, pfile, rdir = d / "mt_bench/question.jsonl", d / "judge_prompts.jsonl", d / "mt_bench/reference_answer"
    for f in (qfile, pfile):
        if not f.is_file():
            raise ConfigError(f"mt_bench data_dir: {f} not found (FastChat's layout: mt_bench/question.jsonl, "
                              "judge_prompts.jsonl, mt_bench/reference_answer/<model>.jsonl; `fairhpc mt-bench "
                              "fetch` downloads them)")
    questions = common.load_questions(str(qfile), None, None)
    for i, q in enumerate(questions, 1):
        if not {"question_id", "category", "turns"} <= set(q) or len(q["turns"]) != 2:
            raise DataError(f"{qfile}: line {i}: a question needs question_id, category and two turns")
    prompts = common.load_judge_prompts(str(pfile))
    need = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
    lacking = [n for n in need if n not in prompts]
    if lacking:
        raise DataError(f"{pfile}: no judge prompt named {', '.join(lacking)}")
    refs = common.load_model_answers(str(rdir)).get(reference_model, {}) if rdir.is_dir() else {}
    need_ref = [q["question_id"] for q in questions if q["category"] in common.NEED_REF_CATS
                and q["question_id"] not in refs]
    if need_ref:
        raise DataError(f"{rdir}/{reference_model}.jsonl: no reference answer for question(s) "
                        f"{need_ref[:5]} of the categories {', '.join(common.NEED_REF_CATS)}")
    return questions, prompts, refs


def mt_bench_generate(policy: str, data_dir: str, answer_file: str, model_id: str, limit: int | None = None,
                      max_new_tokens: int = 1024, sampling: str = "fastchat", batch_size: int = 8,
                      device: str = "auto", seed: int = 0) -> dict:
    """Two-turn answers of ``policy`` in FastChat's answer format -> ``answer_file`` (JSONL).

    sampling ``fastchat``: FastChat's per-category temperatures (``temperature_config``; 0 = greedy);
    ``greedy``: greedy everywhere.  Turn 2 is generated from [q1, a1, q2] with the policy's chat template."""
    import shortuuid

    from fairhpc.evaluation.policy import generate

    common = require("fastchat.llm_judge.common")
    if sampling not in ("fastchat", "greedy"):
        raise ConfigError(f"sampling: {sampling!r} is not one of fastchat, greedy")
    questions, _, _ = load_mt_bench(data_dir)
    questions = questions[:limit] if limit else questions
    model, tok, dev = _generator(policy, device)

    def temp(q):
        return 0.0 if sampling == "greedy" else float(common.temperature_config.get(q["category"], 0.7))

    t0 = time.time()
    convs = {q["question_id"]: [] for q in questions}
    answers = {q["question_id"]: [] for q in questions}
    for turn in (0, 1):
        groups: dict[float, list[dict]] = {}
        for q in questions:
            groups.setdefault(temp(q), []).append(q)
        for t, qs in sorted(groups.items()):
            msgs = [convs[q["question_id"]] + [{"role": "user", "content": q["turns"][turn]}] for q in qs]
            texts, _ = generate(model, tok, msgs, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                device=dev, do_sample=t > 1e-4, temperature=max(t, 1e-4), seed=seed + turn,
                                desc=f"MT-Bench turn {turn + 1} (T={t})")
            for q, m, out in zip(qs, msgs, texts):
                convs[q["question_id"]] = m + [{"role": "assistant", "content": out[0]}]
                answers[q["question_id"]].append(out[0])
    lines = [json.dumps({"question_id": q["question_id"], "answer_id": shortuuid.uuid(), "model_id": model_id,
                         "choices": [{"index": 0, "turns": answers[q["question_id"]]}], "tstamp": time.time()})
             for q in questions]
    atomic_write_text(answer_file, "\n".join(lines) + "\n")
    meta = {"policy": str(policy), "model_id": model_id, "n": len(lines), "sampling": sampling,
            "max_new_tokens": max_new_tokens, "seconds": round(time.time() - t0, 2)}
    atomic_write_json(Path(answer_file).with_suffix(".generation.json"), meta)
    return meta


class LocalJudge:
    """An open-weights judge run by FastChat's own local inference (model adapters and generate_stream)."""

    def __init__(self, path: str, device: str = "auto", max_new_tokens: int = 1024, num_gpus: int = 1,
                 max_context: int | None = None):
        from fastchat.model import load_model

        from fairhpc.rewards.base import resolve_device

        self.device = str(resolve_device(device))
        self.path = str(path)
        self.model, self.tokenizer = load_model(self.path, device=self.device.split(":")[0],
                                                num_gpus=num_gpus if self.device.startswith("cuda") else 0)
        self.max_new_tokens = max_new_tokens
        cfg = self.model.config
        self.context_len = max_context or getattr(cfg, "max_position_embeddings", 4096)

    def __call__(self, conv, temperature: float, max_tokens: int) -> str:
        from fastchat.serve.inference import generate_stream

        params = {"prompt": conv.get_prompt(), "temperature": float(temperature), "top_p": 1.0,
                  "max_new_tokens": min(int(max_tokens), self.max_new_tokens), "echo": False,
                  "stop": conv.stop_str, "stop_token_ids": conv.stop_token_ids or [self.tokenizer.eos_token_id]}
        out = {"text": ""}
        for out in generate_stream(self.model, self.tokenizer, params, self.device,
                                   context_len=self.context_len):
            pass
        return out["text"]


def _openai_chat(model: str, conv, temperature: float, max_tokens: int, retries: int = 8) -> str:
    """An OpenAI-compatible chat completion (openai>=1 client; OPENAI_API_KEY / OPENAI_BASE_URL from the
    environment) for FastChat's judge, which was written against the openai<1 interface."""
    import openai

    common = require("fastchat.llm_judge.common")
    client = openai.OpenAI()
    for attempt in range(retries):
        try:
            r = client.chat.completions.create(model=model, messages=conv.to_openai_api_messages(), n=1,
                                               temperature=temperature, max_tokens=max_tokens)
            return r.choices[0].message.content or ""
        except openai.OpenAIError as e:
            print(f"judge API error ({type(e).__name__}), retry {attempt + 1}/{retries}", flush=True)
            time.sleep(min(60, 2 ** attempt))
    return common.API_ERROR_OUTPUT


def _use_judge(judge_name: str, backend) -> None:
    """Route FastChat's judge calls for ``judge_name`` to ``backend(conv, temperature, max_tokens)``."""
    from fastchat.llm_judge import common

    if judge_name not in common.OPENAI_MODEL_LIST:
        # run_judge_single sends the models of this list to chat_completion_openai
        common.OPENAI_MODEL_LIST = (*common.OPENAI_MODEL_LIST, judge_name)
    previous = getattr(common, "_fairhpc_backends", {})
    previous[judge_name] = backend

    def chat_completion_openai(model, conv, temperature, max_tokens, api_dict=None):
        if model in common._fairhpc_backends:
            return common._fairhpc_backends[model](conv, temperature, max_tokens)
        return _openai_chat(model, conv, temperature, max_tokens)

    common._fairhpc_backends = previous
    common.chat_completion_openai = chat_completion_openai


def mt_bench_judge(data_dir: str, answer_file: str, out_dir: str, judge_model: str = "gpt-4",
                   judge_path: str | None = None, reference_model: str = "gpt-4", device: str = "auto",
                   judge_max_new_tokens: int = 2048) -> dict:
    """FastChat single-answer grading of the answers in ``answer_file`` -> OUT/judgment.jsonl (FastChat's
    judgment format) and OUT/summary.json (overall, per turn, per category, parse failures).

    ``judge_path`` set: the judge is the open-weights model there, run locally by FastChat (the judge's name
    in the judgment file is ``judge_model``); else ``judge_model`` is an OpenAI-compatible API model (the key
    and base URL from OPENAI_API_KEY / OPENAI_BASE_URL; Anthropic models through FastChat's client and
    ANTHROPIC_API_KEY)."""
    common = require("fastchat.llm_judge.common")
    gen_judgment = require("fastchat.llm_judge.gen_judgment")
    questions, prompts, refs = load_mt_bench(data_dir, reference_model)
    ans_path = Path(answer_file)
    if not ans_path.is_file():
        raise ConfigError(f"--answers: file not found: {ans_path}")
    answers = common.load_model_answers(str(ans_path.parent))
    model_id = ans_path.stem
    if model_id not in answers:
        raise DataError(f"{ans_path}: FastChat's loader found no answers (file name = model id, .jsonl)")
    answered = answers[model_id]
    questions = [q for q in questions if q["question_id"] in answered]
    if not questions:
        raise DataError(f"{ans_path}: no answer to any question of {data_dir}")
    if judge_path:
        if not Path(judge_path).exists():
            raise ConfigError(f"judge path: no model at {judge_path}")
        judge_name = str(judge_path)
        _use_judge(judge_name, LocalJudge(judge_path, device=device, max_new_tokens=judge_max_new_tokens))
    else:
        judge_name = judge_model
        if judge_name not in common.ANTHROPIC_MODEL_LIST:
            if not os.environ.get("OPENAI_API_KEY"):
                raise ConfigError(f"judge {judge_name}: set OPENAI_API_KEY (and OPENAI_BASE_URL for another "
                                  "OpenAI-compatible server) in the environment of the judging job")
            _use_judge(judge_name, lambda conv, t, n: _openai_chat(judge_name, conv, t, n))
    judges = gen_judgment.make_judge_single(judge_name, prompts)
    ref_answers = {judge_name: refs}
    q_math = [q for q in questions if q["category"] in common.NEED_REF_CATS]
    q_default = [q for q in questions if q["category"] not in common.NEED_REF_CATS]
    models = [model_id]
    matches = []
    matches += gen_judgment.make_match_single(q_default, models, answers, judges["default"])
    matches += gen_judgment.make_match_single(q_math, models, answers, judges["math"], ref_answers=ref_answers)
    matches += gen_judgment.make_match_single(q_default, models, answers, judges["default-mt"], multi_turn=True)
    matches += gen_judgment.make_match_single(q_math, models, answers, judges["math-mt"],
                                              ref_answers=ref_answers, multi_turn=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / ".judgment.jsonl.partial"
    partial.unlink(missing_ok=True)
    from tqdm.auto import tqdm

    t0 = time.time()
    for m in tqdm(matches, desc="MT-Bench judgments", unit="judgment"):
        common.play_a_match_single(m, output_file=str(partial))
    os.replace(partial, out / "judgment.jsonl")
    summary = mt_bench_scores(out / "judgment.jsonl", questions, model_id)
    summary.update({"benchmark": "mt_bench", "judge": judge_model if judge_path else judge_name,
                    "judge_path": str(judge_path) if judge_path else None, "answers": str(ans_path),
                    "n_questions": len(questions), "full_question_set": len(questions) == MT_BENCH_SIZE,
                    "seconds": round(time.time() - t0, 2)})
    # FastChat's judgment loader must accept the file
    loaded = common.load_single_model_judgments(str(out / "judgment.jsonl"))
    summary["n_judgments_loaded"] = sum(len(v) for v in loaded.values())
    atomic_write_json(out / "summary.json", summary)
    return summary


def mt_bench_scores(judgment_file, questions: list[dict], model_id: str) -> dict:
    """Overall / per-turn / per-category mean ratings of a FastChat judgment file, as FastChat's show_result
    computes them (judgments with score -1, the unparsable ones, are left out and counted)."""
    import pandas as pd

    df = pd.read_json(judgment_file, lines=True)
    df = df[df["model"] == model_id]
    cats = {q["question_id"]: q["category"] for q in questions}
    df["category"] = df["question_id"].map(cats)
    failed = df[df["score"] == -1]
    ok = df[df["score"] != -1]

    def mean(s):
        return None if len(s) == 0 else round(float(s.mean()), 4)

    return {
        "model": model_id,
        "score": mean(ok["score"]),
        "turn_1": mean(ok[ok["turn"] == 1]["score"]), "turn_2": mean(ok[ok["turn"] == 2]["score"]),
        "per_category": {c: mean(g["score"]) for c, g in sorted(ok.groupby("category"))},
        "n_judgments": len(df), "n_parse_failures": len(failed),
        "parse_failures_per_category": {c: len(g) for c, g in sorted(failed.groupby("category"))},
    }


# ====================================================================================== lm-eval
def run_lm_eval(model_path: str, tasks: list[str], out_dir: str, include_path: str | None = None,
                batch_size: int | str = 8, limit: float | None = None, num_fewshot: int | None = None,
                device: str = "auto", dtype: str = "auto", seed: int = 0) -> dict:
    """lm-evaluation-harness through its Hugging Face model interface -> OUT/results.json (the harness's
    results, configs and versions), OUT/samples_<task>.jsonl and OUT/summary.json (metrics per task)."""
    lm_eval = require("lm_eval")
    from lm_eval.tasks import TaskManager

    from fairhpc.rewards.base import resolve_device

    if not tasks:
        raise ConfigError("lm_eval tasks: empty task list")
    if not Path(model_path).exists():
        raise ConfigError(f"--model: no model at {model_path}")
    if include_path and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path: not a folder: {include_path}")
    tm = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        raise ConfigError(f"lm_eval tasks: unknown to the harness: {', '.join(unknown)}"
                          + ("" if include_path else " (local task YAMLs need --include-path)"))
    dev = str(resolve_device(device))
    if dtype == "auto":
        from fairhpc.rewards.base import eval_dtype

        dtype = str(eval_dtype(dev)).replace("torch.", "")
    t0 = time.time()
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model_path},dtype={dtype}",
                                  tasks=list(tasks), task_manager=tm, batch_size=batch_size, device=dev,
                                  limit=limit, num_fewshot=num_fewshot, log_samples=True, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    out = Path(out_dir)
    samples = res.pop("samples", {}) or {}
    for task, rows in samples.items():
        atomic_write_text(out / f"samples_{task}.jsonl",
                          "".join(json.dumps(r, default=str) + "\n" for r in rows))
    atomic_write_json(out / "results.json", {k: res.get(k) for k in ("results", "groups", "configs", "versions",
                                                                     "n-shot", "n-samples", "higher_is_better",
                                                                     "lm_eval_version", "transformers_version")})
    metrics = {}
    for task, vals in (res.get("results") or {}).items():
        metrics[task] = {k: v for k, v in vals.items() if isinstance(v, (int, float)) and k not in ("sample_len",)}
    summary = {"benchmark": "lm_eval", "model": str(model_path), "tasks": list(tasks), "metrics": metrics,
               "n_samples": {t: len(r) for t, r in samples.items()}, "seconds": round(time.time() - t0, 2)}
    atomic_write_json(out / "summary.json", summary)
    return summary


# ====================================================================================== workflow
WORKFLOW_DEFAULTS = {
    "grids": None,              # names of the grids whose policies are benchmarked; None = every policy grid
    "paper_reference": {},      # workflow model name -> paper base (llama3 / qwen2.5) for the reference rows
    "alpaca_eval": {"enabled": True, "instructions": ALPACA_EVAL_HUB, "instructions_file": None,
                    "reference_outputs": None, "annotator": DEFAULT_ANNOTATOR, "limit": None,
                    "max_new_tokens": 2048, "batch_size": 8},
    "mt_bench": {"enabled": True, "data_dir": None, "url": MT_BENCH_URL, "judge": "gpt-4", "judge_path": None,
                 "reference_model": "gpt-4", "limit": None, "max_new_tokens": 1024, "sampling": "fastchat",
                 "batch_size": 8, "judge_max_new_tokens": 2048},
    "lm_eval": {"enabled": True, "tasks": list(DEFAULT_LM_EVAL_TASKS), "include_path": None, "limit": None,
                "batch_size": 8, "num_fewshot": None},
    "resources": {
        "generate": {"gpus": 1, "cpus": 8, "mem_mb": 64000, "runtime": 240},
        "judge": {"gpus": 0, "cpus": 2, "mem_mb": 8000, "runtime": 240},
        "lm_eval": {"gpus": 1, "cpus": 8, "mem_mb": 64000, "runtime": 480},
    },
}
RESOURCE_DEFAULTS = {"nodes": 1, "tasks_per_node": 1, "launcher": "local", "signal_grace_s": 0, "slurm_extra": None}


def workflow_settings(cfg: dict) -> dict:
    """The ``policy_benchmarks`` section of a workflow config with every default filled in ({} = off)."""
    sec = cfg.get("policy_benchmarks") or {}
    if not sec:
        return {}
    check_no_secrets(sec, "policy_benchmarks")
    out = json.loads(json.dumps(WORKFLOW_DEFAULTS))
    for k, v in sec.items():
        if k not in out:
            raise ConfigError(f"policy_benchmarks.{k}: unknown key; known: {', '.join(out)}")
        if isinstance(out[k], dict) and k != "paper_reference":
            if not isinstance(v, dict):
                raise ConfigError(f"policy_benchmarks.{k}: expected a mapping, got {v!r}")
            for kk, vv in v.items():
                if kk not in out[k]:
                    raise ConfigError(f"policy_benchmarks.{k}.{kk}: unknown key; known: {', '.join(out[k])}")
                out[k][kk] = {**out[k][kk], **vv} if k == "resources" else vv
        else:
            out[k] = v
    for name, r in out["resources"].items():
        out["resources"][name] = {**RESOURCE_DEFAULTS, **r}
    for base in out["paper_reference"].values():
        if base not in PAPER_RESULTS:
            raise ConfigError(f"policy_benchmarks.paper_reference: {base!r} is not one of {', '.join(PAPER_RESULTS)}")
    if out["mt_bench"]["sampling"] not in ("fastchat", "greedy"):
        raise ConfigError(f"policy_benchmarks.mt_bench.sampling: {out['mt_bench']['sampling']!r} is not one of "
                          "fastchat, greedy")
    return out


def benchmark_runs(plan, settings: dict) -> list:
    """The runs of ``plan`` whose final policies are benchmarked (grids of a policy task)."""
    from fairhpc import registry

    if not settings:
        return []
    names = settings["grids"]
    if names is not None:
        unknown = sorted(set(names) - set(plan.grids))
        if unknown:
            raise ConfigError(f"policy_benchmarks.grids: no grid named {', '.join(unknown)} in the config")
    runs = []
    for g, keys in plan.grids.items():
        if names is not None and g not in names:
            continue
        for key in keys:
            r = plan.runs[key]
            if r.task in registry.EVAL_POLICY_TASKS and r not in runs:
                runs.append(r)
    return runs


def fetch_for_workflow(settings: dict, out_dir: str, download: bool = True) -> dict:
    """On a host with internet, before offline jobs: the AlpacaEval instructions and baseline outputs (local
    copies) and the files of its length-controlled GLM (into the hub cache), FastChat's MT-Bench files, the
    data of the lm-eval tasks (into the datasets cache) and a hub-named local judge -> OUT/fetched.json.
    ``download`` False (the workflow's ``hub.fetch: false``): nothing is downloaded; the hub items are read
    from the cache and the MT-Bench files must be a local ``data_dir``."""
    from fairhpc.hub import is_hub_name

    out = Path(out_dir)
    record: dict = {"download": download}
    ae, mt, le = settings["alpaca_eval"], settings["mt_bench"], settings["lm_eval"]
    if ae["enabled"]:
        if not ae["instructions_file"]:
            rows, source = load_alpaca_eval_instructions(ae["instructions"], None)
            atomic_write_json(out / "alpaca_eval/instructions.json", rows)
            record["alpaca_eval_instructions"] = {"source": source, "n": len(rows)}
        if not ae["reference_outputs"]:
            ref = _alpaca_hub_records("alpaca_eval_gpt4_baseline")
            atomic_write_json(out / "alpaca_eval/reference_outputs.json", ref)
            record["alpaca_eval_reference"] = {"n": len(ref)}
        from huggingface_hub import hf_hub_download

        for f in ("df_gamed.csv", "instruction_difficulty.csv"):  # read by the package's LC metric
            if not download:
                record[f] = "not fetched (hub.fetch is false)"
                continue
            try:
                hf_hub_download(ALPACA_EVAL_HUB, f, repo_type="dataset")
                record[f] = "cached"
            except Exception as e:  # noqa: BLE001 - the judge then reports LC as unavailable, with this reason
                record[f] = f"not cached: {type(e).__name__}"
    if mt["enabled"]:
        if not mt["data_dir"]:
            if not download:
                raise ConfigError("policy_benchmarks.mt_bench.data_dir: needed when hub.fetch is false (FastChat's "
                                  "MT-Bench files are downloaded from its repository otherwise)")
            record["mt_bench"] = fetch_mt_bench(str(out / "mt_bench_data"), mt["url"])
        jp = mt["judge_path"]
        if download and jp and is_hub_name(jp) and not Path(jp).exists():
            from huggingface_hub import snapshot_download

            record["mt_bench_judge"] = snapshot_download(jp)
    if le["enabled"] and download:
        lm_tasks = require("lm_eval.tasks")
        tm = lm_tasks.TaskManager(include_path=le["include_path"]) if le["include_path"] else lm_tasks.TaskManager()
        lm_tasks.get_task_dict(list(le["tasks"]), tm)  # builds the tasks, which downloads their data
        record["lm_eval_tasks"] = list(le["tasks"])
    atomic_write_json(out / "fetched.json", record)
    return record


# ====================================================================================== report
def _mode_of(point: str) -> str:
    return point.split("_", 1)[0]


def comparison_report(runs: list[dict], out_md: str, paper_base: str | None = None) -> dict:
    """A Markdown table (and JSON) of the benchmarks of several runs, with the paper's published numbers
    as reference rows.  ``runs``: [{"name", "point", "alpaca_eval": summary.json path or None, "mt_bench": ...,
    "lm_eval": ...}]; ``paper_base``: "llama3" / "qwen2.5" (None = no reference rows)."""
    rows = []
    lm_cols: list[str] = []
    for r in runs:
        row = {"run": r["name"], "mode": _mode_of(r["point"]), "source": "reproduced"}
        for key in ("alpaca_eval", "mt_bench", "lm_eval"):
            path = r.get(key)
            if not path:
                continue
            if not Path(path).is_file():
                raise DataError(f"{path}: not found (benchmark summary of {r['name']})")
            s = json.loads(Path(path).read_text())
            if key == "alpaca_eval":
                row.update(alpaca_eval_lc=s["length_controlled_winrate"], alpaca_eval_lc_se=s["lc_standard_error"],
                           alpaca_eval_wr=s["win_rate"], alpaca_eval_wr_se=s["standard_error"],
                           alpaca_eval_n=s["n_total"], alpaca_eval_note=s.get("lc_unavailable_reason"))
            elif key == "mt_bench":
                row.update(mt_bench=s["score"], mt_bench_turn1=s["turn_1"], mt_bench_turn2=s["turn_2"],
                           mt_bench_parse_failures=s["n_parse_failures"], mt_bench_n=s["n_judgments"])
            else:
                for task, vals in s["metrics"].items():
                    for m, v in vals.items():
                        if "stderr" not in m:
                            col = f"{task}:{m.split(',')[0]}"
                            row[col] = v
                            if col not in lm_cols:
                                lm_cols.append(col)
        rows.append(row)
    ref_rows = []
    if paper_base:
        if paper_base not in PAPER_RESULTS:
            raise ConfigError(f"paper_reference: {paper_base!r} is not one of {', '.join(PAPER_RESULTS)}")
        for mode, vals in PAPER_RESULTS[paper_base].items():
            ref_rows.append({"run": f"paper ({paper_base}, {mode.upper()})", "mode": mode,
                             "source": "paper (published, reference)", **vals})

    def fmt(v, se=None):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        s = f"{v:.2f}" if isinstance(v, float) else str(v)
        return s + (f" ± {se:.2f}" if isinstance(se, float) and not math.isnan(se) else "")

    head = ["run", "mode", "source", "AlpacaEval 2 LC", "AlpacaEval 2 WR", "MT-Bench", "MT-Bench parse failures",
            *lm_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows + ref_rows:
        cells = [row["run"], row["mode"], row["source"], fmt(row.get("alpaca_eval_lc"), row.get("alpaca_eval_lc_se")),
                 fmt(row.get("alpaca_eval_wr"), row.get("alpaca_eval_wr_se")), fmt(row.get("mt_bench")),
                 fmt(row.get("mt_bench_parse_failures")), *[fmt(row.get(c)) for c in lm_cols]]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['run']}: AlpacaEval length-controlled win rate unavailable: {r['alpaca_eval_note']}"
             for r in rows if r.get("alpaca_eval_note")]
    text = ("# Policy benchmarks\n\nReproduced rows are this workflow's policies; rows marked *paper (published, "
            "reference)* are the numbers printed in the paper, shown for comparison, not measured here.\n\n"
            + "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else ""))
    atomic_write_text(out_md, text)
    data = {"rows": rows, "reference_rows": ref_rows}
    atomic_write_json(Path(out_md).with_suffix(".json"), data)
    return data
