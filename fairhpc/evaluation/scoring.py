"""Batched scoring of preference pairs and of single responses, on GPU or CPU: reward-model rewards,
and causal-LM log-probs for the DPO implicit reward beta * log(pi / pi_ref).

Sequences are tokenized exactly as for training (:func:`fairhpc.data.tokenize_example`: the chat template,
``data.max_length`` and the truncation side of the run config), sorted by length so that a batch pads
little, scored with :func:`fairhpc.models.sequence_rewards` / :func:`~fairhpc.models.sequence_logps` under
``torch.no_grad`` and put back in order.  A response's length is its number of label tokens (after
truncation).  Bad command-line values raise ConfigError (the CLI's exit code 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fairhpc import layout
from fairhpc.errors import ConfigError, DataError, ModelPathError
from fairhpc.evaluation import TIE_POLICIES
from fairhpc.evaluation.metrics import summarize_pairs, to_jsonable
from fairhpc.sources import is_local_path

# Files a save_pretrained directory holds: a config, weights in one of these forms, and a tokenizer.
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


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
    from fairhpc.evaluation.kinds import read_marker

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

    from fairhpc.evaluation.kinds import read_marker

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


def load_tokenizer_for(path: str):
    """The tokenizer saved with a model (``final/`` holds one), with the project's pad/template fallbacks."""
    from fairhpc.config import ModelConfig
    from fairhpc.tokenizer import load_tokenizer

    return load_tokenizer(ModelConfig(name_or_path=str(path)))


def load_scorer(path: str, device: str = "auto"):
    """(reward model in eval mode on ``device``, its tokenizer, device) of a sequence-classification reward
    model (kinds scalar and moe); other kinds load through fairhpc.evaluation.kinds.load_model_scorer."""
    from fairhpc.evaluation.kinds import require_scalar
    from fairhpc.models import load_reward_model

    if require_scalar(path, "reward model", "it was loaded as a scalar reward model") == "armo":
        raise ConfigError(f"reward model {path}: an ArmoRM directory; load it with "
                          "fairhpc.evaluation.kinds.load_model_scorer")
    dev = resolve_device(device)
    tok = load_tokenizer_for(path)
    model = load_reward_model(str(path), dtype=eval_dtype(dev), tokenizer=tok).to(dev).eval()
    return model, tok, dev


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
def score_sequences(model, sequences: list[list[int]], pad_id: int, batch_size: int, device,
                    desc: str = "scoring", labels: list[list[int]] | None = None) -> np.ndarray:
    """[N] float64 scores of token sequences, in length-sorted batches (right padding).

    Without ``labels``: the reward model's scalar reward of each sequence.  With ``labels`` (-100 on
    tokens not to count): the causal LM's summed log-probability of the labelled tokens.
    """
    import torch
    from tqdm.auto import tqdm

    from fairhpc.models import sequence_logps, sequence_rewards

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    n = len(sequences)
    out = np.empty(n, dtype=np.float64)
    order = sorted(range(n), key=lambda i: len(sequences[i]), reverse=True)  # longest first: OOM shows early
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n == 0):
            idx = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            lab = torch.full((len(idx), width), -100, dtype=torch.long)
            for row, i in enumerate(idx):
                seq = sequences[i]
                ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                mask[row, :len(seq)] = 1
                if labels is not None:
                    lab[row, :len(seq)] = torch.as_tensor(labels[i], dtype=torch.long)
            if labels is None:
                r = sequence_rewards(model, ids.to(device), mask.to(device))
            else:
                r = sequence_logps(model, ids.to(device), mask.to(device), lab.to(device))
            out[idx] = r.detach().double().cpu().numpy()
    return out


def _response_length(labels: list[int]) -> int:
    return sum(1 for t in labels if t != -100)


def tokenize_pairs(examples: list, tokenizer, data_cfg) -> list[dict]:
    from fairhpc.data import tokenize_example

    return [tokenize_example(ex, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length,
                             data_cfg.truncation_side) for ex in examples]


@dataclass
class PairScores:
    chosen: np.ndarray           # [n] r(prompt, chosen)
    rejected: np.ndarray         # [n] r(prompt, rejected)
    chosen_length: np.ndarray    # [n] response tokens scored
    rejected_length: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        return self.chosen - self.rejected


def score_pairs(model, tokenizer, examples: list, data_cfg, batch_size: int, device,
                desc: str = "scoring pairs", logps: bool = False) -> PairScores:
    """Both responses of every PreferenceExample, in one length-sorted pass over 2n sequences:
    a reward model's rewards, or (``logps``) a causal LM's summed response log-probs log pi(y | x)."""
    toks = tokenize_pairs(examples, tokenizer, data_cfg)
    seqs = [t["chosen_input_ids"] for t in toks] + [t["rejected_input_ids"] for t in toks]
    labels = [t["chosen_labels"] for t in toks] + [t["rejected_labels"] for t in toks] if logps else None
    r = score_sequences(model, seqs, tokenizer.pad_token_id, batch_size, device, desc, labels)
    n = len(toks)
    return PairScores(r[:n], r[n:],
                      np.array([_response_length(t["chosen_labels"]) for t in toks], dtype=np.int64),
                      np.array([_response_length(t["rejected_labels"]) for t in toks], dtype=np.int64))


def implicit_rewards(policy_lp: PairScores, reference_lp: PairScores, beta: float) -> PairScores:
    """DPO implicit rewards r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) of both responses, so that
    r(chosen) - r(rejected) is exactly the DPO margin the training objective allocates (docs/method.md)."""
    return PairScores(beta * (policy_lp.chosen - reference_lp.chosen),
                      beta * (policy_lp.rejected - reference_lp.rejected),
                      policy_lp.chosen_length, policy_lp.rejected_length)


def score_responses(model, tokenizer, prompts: list[list[dict]], responses: list[str], data_cfg,
                    batch_size: int, device, desc: str = "scoring responses") -> tuple[np.ndarray, np.ndarray]:
    """([N] rewards, [N] response lengths in tokens) of single assistant responses to their prompts."""
    from fairhpc.data import PreferenceExample

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    # through tokenize_example (the training tokenization) as a pair whose second response is unused
    exs = [PreferenceExample(prompt=p, chosen=[{"role": "assistant", "content": r}],
                             rejected=[{"role": "assistant", "content": r}], category=None,
                             source=f"response {i}", meta={})
           for i, (p, r) in enumerate(zip(prompts, responses))]
    toks = tokenize_pairs(exs, tokenizer, data_cfg)
    rewards = score_sequences(model, [t["chosen_input_ids"] for t in toks], tokenizer.pad_token_id,
                              batch_size, device, desc)
    return rewards, np.array([_response_length(t["chosen_labels"]) for t in toks], dtype=np.int64)


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

