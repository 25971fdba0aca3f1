"""Reward-model evaluation on preference pairs: what ``fairhpc eval-rm`` writes, callable in-process.

Two steps, so that bad data fails before a model is touched: :func:`prepare_reward_eval` loads and checks
the pairs and options, :func:`run_reward_eval` scores them with a model in memory and writes
OUT/per_example.jsonl and OUT/summary.json.  ``fairhpc eval-rm`` runs them around loading RUN/final; the
training engine calls :func:`evaluate_reward_model` (both steps) with the model it holds at the end of
training, which writes the same files with the same numbers without a second process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ConfigError
from fairhpc.evaluation.scoring import data_config, evaluate_pairs, load_examples, write_results
from fairhpc.rewards.base import PairScores


def parse_taus(taus: str | Sequence[float] | None, run_cfg=None) -> list[float]:
    """--taus "-1,0.5" (or a list of floats) -> [-1.0, 0.5]; default: the run's objective tau (first), then
    -1 (Jain).  tau = 1 is refused (Lan's index is identically 0 there)."""
    if isinstance(taus, str) and taus:
        try:
            out = [float(t) for t in taus.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--taus {taus!r}: expected comma-separated numbers, e.g. --taus=-1,0.5") from None
    elif taus:
        out = [float(t) for t in taus]
    else:
        out = [float(run_cfg.objective.tau)] if run_cfg is not None else []
        out += [-1.0] if -1.0 not in out else []
    if not out or 1.0 in out:
        raise ConfigError("--taus: tau = 1 makes Lan's index identically 0; choose tau != 1")
    return out


@dataclass
class RewardEval:
    """The checked pairs of one evaluation and how to score and summarise them."""

    examples: list          # PreferenceExamples
    skipped: dict           # rows skipped by reason
    data_cfg: object        # DataConfig: max_length, max_prompt_length, truncation side
    taus: list[float]
    ties: str
    batch_size: int
    record: dict            # recorded in summary.json: model, data, split, max_length, skipped


def prepare_reward_eval(data: str, run_cfg=None, *, model_name: str, split: str | None = None,
                        fmt: str = "auto", bad_rows: str = "error", limit: int | None = None,
                        taus: str | Sequence[float] | None = None, ties: str = "wrong", batch_size: int = 16,
                        max_length: int | None = None, max_prompt_length: int | None = None) -> RewardEval:
    """Load and check the pairs of ``data`` ('synthetic' = the run config's held-out set, a file or a hub
    dataset) and the options, as eval-rm does; nothing is scored.  Raises ConfigError / DataError."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    taus = parse_taus(taus, run_cfg)
    dcfg = data_config(run_cfg, max_length, max_prompt_length)
    examples, skipped = load_examples(data, run_cfg, split, fmt, bad_rows, limit)
    record = {"model": str(model_name), "data": data, "split": split, "max_length": dcfg.max_length,
              "skipped": skipped}
    return RewardEval(examples, skipped, dcfg, taus, ties, batch_size, record)


def write_reward_eval(spec: RewardEval, scores: PairScores, out_dir, device, kind: str | None = None,
                      extras: dict | None = None, **record) -> dict:
    """Per-example rows and summary of ``scores`` (rewards of both responses of every pair), written to
    ``out_dir``; ``kind`` replaces "reward_model" (e.g. a DPO policy's implicit reward); ``extras``: what a
    model kind adds per pair (fairhpc.evaluation.kinds.attach_extras).  Returns the summary."""
    from fairhpc.evaluation.kinds import attach_extras

    rows, summary = evaluate_pairs(spec.examples, scores, spec.taus, spec.ties,
                                   extra={**spec.record, **record, "device": str(device)})
    if kind is not None:
        summary["kind"] = kind
    attach_extras(rows, summary, extras or {}, spec.examples)
    write_results(out_dir, rows, summary)
    return summary


def run_scorer_eval(scorer, spec: RewardEval, out_dir) -> dict:
    """Score ``spec``'s pairs with a scorer of any model kind (fairhpc.evaluation.kinds) and write
    OUT/per_example.jsonl and OUT/summary.json (with ``model_kind``).  Returns the summary."""
    scores, extras = scorer.score_pairs(spec.examples, spec.data_cfg, spec.batch_size)
    return write_reward_eval(spec, scores, out_dir, scorer.device, extras=extras, model_kind=scorer.kind)


def run_reward_eval(model, tokenizer, spec: RewardEval, out_dir, device=None) -> dict:
    """Score ``spec``'s pairs with ``model`` (a reward model in memory: sequence classification, or a
    pairwise preference model, on ``device``, default: where its parameters are) and write
    OUT/per_example.jsonl and OUT/summary.json.  The model is put in eval mode for the pass and back in its
    previous mode after.  Returns the summary."""
    from fairhpc.rewards import scorer_for_model

    dev = device if device is not None else next(model.parameters()).device
    return run_scorer_eval(scorer_for_model(model, tokenizer, dev, spec.record["model"]), spec, out_dir)


def evaluate_reward_model(model, tokenizer, data: str, out_dir, *, run_cfg=None, model_name: str | None = None,
                          device=None, split: str | None = None, fmt: str = "auto", bad_rows: str = "error",
                          limit: int | None = None, taus: str | Sequence[float] | None = None,
                          ties: str = "wrong", batch_size: int = 16, max_length: int | None = None,
                          max_prompt_length: int | None = None) -> dict:
    """In-process ``fairhpc eval-rm --model MODEL_NAME --data DATA --out OUT_DIR [options]`` with a model
    already in memory: the same files and numbers as the command run on the saved model.

    ``run_cfg`` plays the part of the RunConfig the command finds in RUN/config.yaml (data settings, the
    synthetic held-out set, the default taus); ``model_name`` is what summary.json records as "model"
    (default: OUT_DIR/../final, i.e. RUN/final for OUT_DIR = RUN/eval).  Returns the summary.
    """
    if model_name is None:
        model_name = str(Path(out_dir).parent / layout.FINAL)
    spec = prepare_reward_eval(data, run_cfg, model_name=model_name, split=split, fmt=fmt, bad_rows=bad_rows,
                               limit=limit, taus=taus, ties=ties, batch_size=batch_size, max_length=max_length,
                               max_prompt_length=max_prompt_length)
    return run_reward_eval(model, tokenizer, spec, out_dir, device)
