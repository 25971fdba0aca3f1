"""Reward models: what each kind is, how it is loaded from a directory, how it scores.

    base     the kind of a model directory (fairhpc_model.json, :func:`~fairhpc.rewards.base.detect_kind`),
             devices, PairScores and the Scorer interface every kind implements
    scalar   sequence-classification reward models: kinds scalar and moe (``fairhpc train-rm``)
    pair_pm  the pairwise preference model (``fairhpc train-pair-pm``): its template, tokenization and margins
    armo     ArmoRM (``fairhpc train-armo``): the gate, the assembled model and its scorer

A scorer (:func:`load_model_scorer` for a directory, :func:`scorer_for_model` for a model in memory) has
    score_pairs(examples, data_cfg, batch_size, desc) -> (PairScores, extras)
    score_responses(prompts, responses, data_cfg, batch_size, desc) -> ([N] rewards, [N] lengths)
    compare(prompts, ys1, ys2, data_cfg, batch_size, desc) -> [N] margin of y1 over y2
and a pair-pm scorer also ``prefer`` (log-odds of y1 over y2 and both orders' answer gaps) and
``preference_matrices`` (all pairs of candidates).  For a pair-pm, PairScores hold log P(chosen > rejected)
and log P(rejected > chosen), so their difference is the preference's log-odds and accuracy counts
P(chosen > rejected) > 1/2, as RLHFlow's RewardBench script does.  ``extras`` carries what a kind adds per
pair (gate weights, objective scores, both orders' probabilities).

The training tasks save through this package (the marker, the pair-pm template), and the evaluation
commands, Best-of-N and policy gradient's reward source load through it; nothing here imports
fairhpc.evaluation or fairhpc.tasks (tests/test_imports.py).
"""

from __future__ import annotations

from fairhpc.rewards.base import (
    MARKER,
    SCALAR_KINDS,
    Scorer,
    detect_kind,
    read_marker,
    require_scalar,
    write_marker,
)

__all__ = ["MARKER", "SCALAR_KINDS", "Scorer", "detect_kind", "load_model_scorer", "read_marker", "require_scalar",
           "scorer_for_model", "write_marker"]


def scorer_for_model(model, tokenizer, device, name: str) -> Scorer:
    """The scorer of a model in memory (the training engine's, for --then-eval)."""
    from fairhpc.rewards.base import kind_of_model
    from fairhpc.rewards.pair_pm import PairPMScorer
    from fairhpc.rewards.scalar import RewardModelScorer

    if kind_of_model(model) == "pair_pm":
        return PairPMScorer(model, tokenizer, device, name)
    return RewardModelScorer(model, tokenizer, device, name)


def load_model_scorer(path, device: str = "auto", option: str = "--model", need_scalar: str | None = None) -> Scorer:
    """Load the model at ``path`` as the scorer of its kind.  ``need_scalar`` (what the caller needs a
    scalar score for): refuse a pairwise model first (:func:`require_scalar`)."""
    from fairhpc.rewards.base import eval_dtype, load_tokenizer_for, resolve_device
    from fairhpc.rewards.scalar import RewardModelScorer, load_scorer

    kind = require_scalar(path, option, need_scalar) if need_scalar else detect_kind(path)
    dev = resolve_device(device)
    if kind == "pair_pm":
        from fairhpc.models import load_policy
        from fairhpc.rewards.pair_pm import PairPMScorer

        tok = load_tokenizer_for(path)
        model = load_policy(str(path), dtype=eval_dtype(dev), tokenizer=tok).to(dev).eval()
        return PairPMScorer(model, tok, dev, str(path))
    if kind == "armo":
        from fairhpc.rewards.armo import ArmoScorer, load_armo

        return ArmoScorer(load_armo(str(path), dev), dev, str(path))
    model, tok, dev = load_scorer(path, device)
    return RewardModelScorer(model, tok, dev, str(path))
