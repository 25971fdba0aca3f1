"""What every kind of reward model shares: its kind (read from the directory), devices, the scorer interface.

A model directory says its kind in ``fairhpc_model.json`` (``{"kind": ...}``, :func:`write_marker`); without
that file, config.json's ``fairhpc_kind`` / ``fairhpc_head`` decide, and anything else is scalar
(:func:`detect_kind`).  The kinds are fairhpc.registry.MODEL_KINDS; the scorer of each lives in its own
module of this package (fairhpc/rewards/__init__.py lists them).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairhpc import registry
from fairhpc.errors import ConfigError, ModelPathError

MARKER = "fairhpc_model.json"
SCALAR_KINDS = ("scalar", "moe", "armo")  # kinds that give one score per response


class ScalarScoreError(ConfigError):
    """A pairwise model was asked for a scalar score."""

    kind = "model kind"


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return dev


def eval_dtype(device):
    """bf16 on a GPU that supports it (as in training), float32 otherwise."""
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer_for(path: str):
    """The tokenizer saved with a model (``final/`` holds one), with the project's pad/template fallbacks."""
    from fairhpc.config import ModelConfig
    from fairhpc.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(path)))


def write_marker(model_dir, info: dict) -> None:
    """``model_dir/fairhpc_model.json`` (atomically); ``info["kind"]`` must be a registered kind."""
    from fairhpc.io import atomic_write_json

    if info.get("kind") not in registry.MODEL_KINDS:
        raise ValueError(f"unknown model kind {info.get('kind')!r}; registered: {', '.join(registry.MODEL_KINDS)}")
    atomic_write_json(Path(model_dir) / MARKER, info)


def read_marker(path) -> dict | None:
    """The parsed fairhpc_model.json of a local model directory, or None."""
    f = Path(str(path)).expanduser() / MARKER
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelPathError(f"{f}: unreadable model marker ({e})") from None
    if not isinstance(info, dict) or info.get("kind") not in registry.MODEL_KINDS:
        got = info.get("kind") if isinstance(info, dict) else info
        raise ModelPathError(f"{f}: field 'kind': {got!r} is not a model kind "
                             f"({', '.join(registry.MODEL_KINDS)})")
    return info


def _kind_of_config(cfg: dict) -> str:
    if cfg.get("fairhpc_kind") in registry.MODEL_KINDS:
        return cfg["fairhpc_kind"]
    return "moe" if cfg.get("fairhpc_head") == "moe" else "scalar"


def detect_kind(path) -> str:
    """The kind of a saved model: its marker, else its config.json, else scalar (also for hub names)."""
    info = read_marker(path)
    if info is not None:
        return info["kind"]
    cfg = Path(str(path)).expanduser() / "config.json"
    if cfg.is_file():
        try:
            return _kind_of_config(json.loads(cfg.read_text()))
        except (OSError, json.JSONDecodeError):
            return "scalar"
    return "scalar"


def kind_of_model(model) -> str:
    """The kind of a model in memory (its config's fairhpc_kind / fairhpc_head)."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return _kind_of_config(cfg.to_dict() if hasattr(cfg, "to_dict") else {})


def require_scalar(path, option: str = "--model", purpose: str = "this command needs one score per response") -> str:
    """Refuse (before any model is loaded) a model that cannot give a scalar score; returns its kind."""
    kind = detect_kind(path)
    if kind not in SCALAR_KINDS:
        raise ScalarScoreError(
            f"{option} {path}: a pairwise preference model (kind {kind}, see {MARKER}) compares two responses "
            f"and has no scalar score, but {purpose}; give a scalar, moe or armo reward model, or score it "
            "pairwise (eval-rm, eval-benchmark, best-of-n --reward-model with --pairwise)")
    return kind


@dataclass
class PairScores:
    chosen: np.ndarray           # [n] r(prompt, chosen)
    rejected: np.ndarray         # [n] r(prompt, rejected)
    chosen_length: np.ndarray    # [n] response tokens scored
    rejected_length: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        return self.chosen - self.rejected


@contextlib.contextmanager
def _eval_mode(model):
    was = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if hasattr(model, "train"):
            model.train(was)


class Scorer:
    """One loaded reward model of any kind: ``score_pairs`` (both responses of PreferenceExamples, with the
    kind's extras), ``score_responses`` (one score per response; a pairwise kind refuses) and ``compare``
    (log-odds-like margin of y1 over y2: a score difference, or a pairwise model's log-odds)."""

    kind = "scalar"
    pairwise = False

    def __init__(self, name: str, device):
        self.name, self.device = str(name), device

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "scoring pairs"):
        raise NotImplementedError

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        raise NotImplementedError

    def compare(self, prompts, ys1: list[str], ys2: list[str], data_cfg, batch_size: int,
                desc: str = "comparing pairs") -> np.ndarray:
        """[N] r(prompt, y1) - r(prompt, y2) of each (prompt, y1, y2)."""
        n = len(prompts)
        r, _ = self.score_responses(list(prompts) * 2, list(ys1) + list(ys2), data_cfg, batch_size, desc)
        return np.asarray(r[:n], dtype=np.float64) - np.asarray(r[n:], dtype=np.float64)


def _sigmoid(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _log_sigmoid(x) -> np.ndarray:
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))
