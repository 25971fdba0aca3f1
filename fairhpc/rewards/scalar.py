"""Sequence-classification reward models (kinds scalar and moe, ``fairhpc train-rm``): one reward per
sequence; a moe head (``model.head=moe``) adds E expert scores and a softmax gate, the reward being their
gated sum (fairhpc/models.py).

Sequences are tokenized exactly as for training (:func:`fairhpc.data.tokenize_example`: the chat template,
``data.max_length`` and the truncation side of the run config), sorted by length so that a batch pads
little, scored with :func:`fairhpc.models.sequence_rewards` / :func:`~fairhpc.models.sequence_logps` under
``torch.no_grad`` and put back in order.  A response's length is its number of label tokens (after
truncation).  :func:`score_pairs` with ``logps`` gives a causal LM's response log-probs instead (the DPO
implicit reward of fairhpc/evaluation/scoring.py).
"""

from __future__ import annotations

import numpy as np

from fairhpc.errors import ConfigError
from fairhpc.rewards.base import (
    PairScores,
    Scorer,
    _eval_mode,
    eval_dtype,
    kind_of_model,
    load_tokenizer_for,
    resolve_device,
)


def load_scorer(path: str, device: str = "auto"):
    """(reward model in eval mode on ``device``, its tokenizer, device) of a sequence-classification reward
    model (kinds scalar and moe); other kinds load through fairhpc.rewards.load_model_scorer."""
    from fairhpc.models import load_reward_model
    from fairhpc.rewards.base import require_scalar

    if require_scalar(path, "reward model", "it was loaded as a scalar reward model") == "armo":
        raise ConfigError(f"reward model {path}: an ArmoRM directory; load it with "
                          "fairhpc.rewards.load_model_scorer")
    dev = resolve_device(device)
    tok = load_tokenizer_for(path)
    model = load_reward_model(str(path), dtype=eval_dtype(dev), tokenizer=tok).to(dev).eval()
    return model, tok, dev


def length_sorted_batches(sequences: list[list[int]], pad_id: int, batch_size: int, desc: str,
                          labels: list[list[int]] | None = None):
    """Yield (indices, ids, mask, labels or None) of right-padded batches, longest sequences first (an
    out-of-memory shows at the start), with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    n = len(sequences)
    order = sorted(range(n), key=lambda i: len(sequences[i]), reverse=True)
    for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n == 0):
        idx = order[start:start + batch_size]
        width = max(len(sequences[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        lab = torch.full((len(idx), width), -100, dtype=torch.long) if labels is not None else None
        for row, i in enumerate(idx):
            seq = sequences[i]
            ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
            if lab is not None:
                lab[row, :len(seq)] = torch.as_tensor(labels[i], dtype=torch.long)
        yield idx, ids, mask, lab


def score_sequences(model, sequences: list[list[int]], pad_id: int, batch_size: int, device,
                    desc: str = "scoring", labels: list[list[int]] | None = None) -> np.ndarray:
    """[N] float64 scores of token sequences, in length-sorted batches (right padding).

    Without ``labels``: the reward model's scalar reward of each sequence.  With ``labels`` (-100 on
    tokens not to count): the causal LM's summed log-probability of the labelled tokens.
    """
    import torch

    from fairhpc.models import sequence_logps, sequence_rewards

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    out = np.empty(len(sequences), dtype=np.float64)
    with torch.no_grad():
        for idx, ids, mask, lab in length_sorted_batches(sequences, pad_id, batch_size, desc, labels):
            if lab is None:
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


class RewardModelScorer(Scorer):
    """A sequence-classification reward model (kinds scalar and moe)."""

    def __init__(self, model, tokenizer, device, name: str):
        super().__init__(name, device)
        self.model, self.tokenizer = model, tokenizer
        self.kind = kind_of_model(model)

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "scoring pairs"):
        with _eval_mode(self.model):
            if self.kind != "moe":
                return score_pairs(self.model, self.tokenizer, examples, data_cfg, batch_size, self.device,
                                   desc), {}
            toks = tokenize_pairs(examples, self.tokenizer, data_cfg)
            seqs = [t["chosen_input_ids"] for t in toks] + [t["rejected_input_ids"] for t in toks]
            parts = _reward_parts(self.model, seqs, self.tokenizer.pad_token_id, batch_size, self.device, desc)
        n = len(toks)
        lengths = [np.array([_response_length(t[f"{s}_labels"]) for t in toks], dtype=np.int64)
                   for s in ("chosen", "rejected")]
        scores = PairScores(parts["score"][:n], parts["score"][n:], *lengths)
        names = [f"expert_{e}" for e in range(parts["experts"].shape[1])]
        extras = {"experts": {"names": names, "chosen": parts["experts"][:n], "rejected": parts["experts"][n:]},
                  "gate": {"names": names, "chosen": parts["gate"][:n], "rejected": parts["gate"][n:]}}
        return scores, extras

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):

        with _eval_mode(self.model):
            return score_responses(self.model, self.tokenizer, prompts, responses, data_cfg, batch_size,
                                   self.device, desc)


def _reward_parts(model, sequences, pad_id, batch_size, device, desc) -> dict:
    """Like score_sequences, with a moe head's expert scores and gate weights too."""
    import torch

    from fairhpc.models import reward_parts

    n = len(sequences)
    out: dict = {}
    with torch.no_grad():
        for idx, ids, mask, _ in length_sorted_batches(sequences, pad_id, batch_size, desc):
            parts = reward_parts(model, ids.to(device), mask.to(device))
            for k, v in parts.items():
                v = v.detach().double().cpu().numpy()
                if k not in out:
                    out[k] = np.empty((n, *v.shape[1:]), dtype=np.float64)
                out[k][idx] = v
    return out
