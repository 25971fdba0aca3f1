"""Reward-model evaluation on preference pairs: model-path checks, the run config's data settings, the
evaluation sources, per-example rows and summaries, the DPO implicit reward beta * log(pi / pi_ref), and the
result files.  Scoring itself (batched rewards of pairs and of single responses, devices) is the reward
model's (fairhpc/rewards/).  Bad command-line values raise ConfigError (the CLI's exit code 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairhpc import layout
from fairhpc.errors import ConfigError, DataError, ModelPathError
from fairhpc.evaluation import TIE_POLICIES
from fairhpc.evaluation.metrics import summarize_pairs, to_jsonable
from fairhpc.rewards.base import PairScores
from fairhpc.sources import is_local_path

# Files a save_pretrained directory holds: a config, weights in one of these forms, and a tokenizer.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_path(path: str, option: str = "--model") -> None:
    """Refuse, before any data is read or model loaded, a local model path that does not exist or is not
    a ``save_pretrained`` directory (config.json, weights, tokenizer files); a hub name passes unchecked."""
    if not is_local_path(str(path)):
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelPathError(f"{option} {path}: no such directory")
    if not p.is_dir():
        raise ModelPathError(f"{option} {path}: not a directory (expected a save_pretrained model directory "
                             f"such as RUN/{layout.FINAL})")
    from fairhpc.rewards.base import read_marker

    marker = read_marker(p)
    if marker is not None and marker["kind"] == "armo":  # its own layout, checked by its loader
        return
    missing = []
    if not (p / "config.json").is_file():
        missing.append("config.json")
    if not any(next(p.glob(pat), None) for pat in _WEIGHT_PATTERNS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if not any((p / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(f"tokenizer files ({' / '.join(_TOKENIZER_FILES)})")
    if missing:
        what = "empty" if not any(p.iterdir()) else f"no {', no '.join(missing)}"
        raise ModelPathError(f"{option} {path}: not a model directory ({what}; expected a save_pretrained "
                             f"directory such as RUN/{layout.FINAL})")
    check_model_role(p, option)


# the options that name a model of one role: a policy (a causal LM) or a reward model (a sequence classifier,
# or a pairwise preference model, which is a causal LM with a fairhpc_model.json marker)
OPTION_ROLES = {"--policy": "policy", "--reference": "policy", "--reward-model": "reward model",
                "--gold-reward-model": "reward model"}


def check_model_role(path, option: str, role: str | None = None) -> None:
    """Refuse a local model of the wrong role from its config.json ``architectures`` (nothing is loaded):
    a policy where a reward model is expected, or a reward model where a policy is.  ``role`` defaults to
    the one of ``option`` (:data:`OPTION_ROLES`); an option of no role, or a config without architectures,
    passes."""
    import json

    from fairhpc.rewards.base import read_marker

    role = role or OPTION_ROLES.get(option)
    cfg = Path(path) / "config.json"
    if role is None or not cfg.is_file():
        return
    try:
        arch = " ".join(json.loads(cfg.read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return
    reward_like = "ForSequenceClassification" in arch or read_marker(path) is not None
    if role == "reward model" and "ForCausalLM" in arch and not reward_like:
        raise ModelPathError(f"{option} {path}: a policy ({arch} in config.json), not a reward model; give a "
                             f"reward model directory (e.g. RUN/{layout.FINAL} of train-rm)")
    if role == "policy" and reward_like:
        raise ModelPathError(f"{option} {path}: a reward model ({arch or 'fairhpc_model.json'}), not a policy; "
                             f"give a policy directory (e.g. RUN/{layout.FINAL} of train-dpo or train-sft)")


def find_run_config(model_dir: str | None, explicit: str | None = None):
    """The run config to take data settings from: --config, else MODEL/../config.yaml (a run's final/),
    else MODEL/config.yaml when it is a run config; None if there is none (file names: fairhpc.layout)."""
    from fairhpc.config import load_config

    if explicit:
        return load_config(explicit)
    if model_dir:
        for cand in (Path(model_dir).parent / layout.CONFIG, Path(model_dir) / layout.CONFIG):
            if cand.is_file():
                return load_config(cand)
    return None


def data_config(run_cfg=None, max_length: int | None = None, max_prompt_length: int | None = None):
    """The run's DataConfig with command-line length overrides (validated like a config)."""
    import dataclasses

    from fairhpc.config import DataConfig

    base = run_cfg.data if run_cfg is not None else DataConfig(max_length=1024, max_prompt_length=512)
    changes = {}
    if max_length is not None:
        changes["max_length"] = max_length
    if max_prompt_length is not None:
        changes["max_prompt_length"] = max_prompt_length
    elif max_length is not None and base.max_prompt_length >= max_length:
        changes["max_prompt_length"] = max_length // 2
    cfg = dataclasses.replace(base, **changes)
    if cfg.max_length < 2 or not 0 < cfg.max_prompt_length < cfg.max_length:
        raise ConfigError(f"--max-length {cfg.max_length} / --max-prompt-length {cfg.max_prompt_length}: need "
                          "0 < max_prompt_length < max_length")
    return cfg


# ------------------------------------------------------------------------------------------ scoring
def implicit_rewards(policy_lp: PairScores, reference_lp: PairScores, beta: float) -> PairScores:
    """DPO implicit rewards r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) of both responses, so that
    r(chosen) - r(rejected) is exactly the DPO margin the training objective allocates (docs/method.md)."""
    return PairScores(beta * (policy_lp.chosen - reference_lp.chosen),
                      beta * (policy_lp.rejected - reference_lp.rejected),
                      policy_lp.chosen_length, policy_lp.rejected_length)


# ---------------------------------------------------------------------------------------- examples
def load_examples(source: str, run_cfg=None, split: str | None = None, fmt: str = "auto",
                  bad_rows: str = "error", limit: int | None = None) -> tuple[list, dict]:
    """(PreferenceExamples of an evaluation source, skipped rows by reason).

    "synthetic": the held-out split of the run config's synthetic data (the same pairs the training
    run evaluated on); otherwise a local file or hub dataset through :func:`fairhpc.data.load_preferences`.
    """
    if source == "synthetic":
        if run_cfg is None:
            raise ConfigError("--data synthetic: the synthetic held-out set is defined by a run config; "
                              f"give --config RUN/{layout.CONFIG} (or a model inside a run directory)")
        from fairhpc.data import synthetic_examples

        exs = synthetic_examples(run_cfg.data, split="eval")
        limit = limit if limit is not None else run_cfg.data.max_eval_examples
        return (exs[:limit] if limit is not None else exs), {}
    from fairhpc.data import load_preferences

    exs, skipped = load_preferences(source, split=split or "test", fmt=fmt, bad_rows=bad_rows, limit=limit)
    if not exs:
        raise DataError(f"{source}: no usable preference pairs" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return exs, dict(sorted(skipped.items()))


# -------------------------------------------------------------------------------------- evaluation
def correctness(margin: float, ties: str):
    if margin > 0:
        return 1.0
    if margin < 0:
        return 0.0
    return {"wrong": 0.0, "half": 0.5, "exclude": None}[ties]


def evaluate_pairs(examples: list, scores: PairScores, taus=(-1.0,), ties: str = "wrong",
                   extra: dict | None = None) -> tuple[list[dict], dict]:
    """Per-example rows and the summary of a reward model's scores on preference pairs."""
    if ties not in TIE_POLICIES:
        raise ValueError(f"--ties: unknown policy {ties!r}; allowed: {', '.join(TIE_POLICIES)}")
    cats = [ex.category for ex in examples]
    summ = summarize_pairs(scores.chosen, scores.rejected, cats, scores.chosen_length, scores.rejected_length,
                           taus=taus, ties=ties)
    rows = []
    for i, ex in enumerate(examples):
        d = float(scores.chosen[i] - scores.rejected[i])
        row = {"index": i, "source": ex.source, "category": ex.category,
               "reward_chosen": float(scores.chosen[i]), "reward_rejected": float(scores.rejected[i]),
               "margin": d, "correct": correctness(d, ties),
               "length_chosen": int(scores.chosen_length[i]), "length_rejected": int(scores.rejected_length[i])}
        if ex.meta and ex.meta.get("id") is not None:
            row["id"] = ex.meta["id"]
        rows.append(row)
    summ["metrics"].update(ground_truth_metrics(examples, scores.margin))
    summary = {"kind": "reward_model", "ties": ties, "taus": [float(t) for t in taus], **(extra or {}), **summ}
    return rows, to_jsonable(summary)


def ground_truth_metrics(examples: list, margins) -> dict:
    """With the synthetic data's ground truth in ``meta`` (true qualities and the label probability):
    quality_accuracy = share of pairs the reward orders like the true quality (the labels are noisy and
    length-biased, the qualities are not), oracle_accuracy = the Bayes ceiling of label accuracy."""
    out = {}
    try:
        qc = np.array([float(ex.meta["quality_chosen"]) for ex in examples])
        qr = np.array([float(ex.meta["quality_rejected"]) for ex in examples])
    except (KeyError, TypeError, ValueError):
        return out
    d = np.asarray(margins, dtype=np.float64)
    keep = qc != qr
    if keep.any():
        out["quality_accuracy"] = float(np.mean(np.sign(d[keep]) == np.sign(qc[keep] - qr[keep])))
    if all(isinstance(ex.meta.get("p_chosen"), (int, float)) for ex in examples):
        from fairhpc.synthetic import oracle_accuracy

        out["oracle_accuracy"] = oracle_accuracy(examples)
    return out


def write_results(out_dir: str | Path, rows: list[dict], summary: dict, extra_files: dict | None = None) -> None:
    """OUT/per_example.jsonl, extra files (NAME.jsonl: a list of rows; NAME.json: an object) and, last,
    OUT/summary.json (names: :class:`fairhpc.layout.EvalDir`), each written atomically."""
    import json

    from fairhpc.io import atomic_write_json, atomic_write_text

    def jsonl(items) -> str:
        return "".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in items)

    ev = layout.EvalDir(Path(out_dir))
    out = ev.root
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ev.per_example, jsonl(rows))
    for name, obj in (extra_files or {}).items():
        if name.endswith(".jsonl"):
            atomic_write_text(out / name, jsonl(obj))
        else:
            atomic_write_json(out / name, to_jsonable(obj))
    atomic_write_json(ev.summary, to_jsonable(summary))  # last: it marks the job done

