"""The reward R of a (prompt, response): a reward model of this project or a classifier's label probability.

* A model with one output (``fairhpc train-rm``'s final/, or any one-label sequence classifier): R is its
  scalar output.  By default it reads the conversation (prompt + response in its tokenizer's chat
  template), as it was trained.
* A model with several labels (a transformers sequence classifier, e.g. a sentiment or topic model, or the
  synthetic task's classifier of ``fairhpc pg-classifier``): R = softmax(logits)[target_label], read from
  the response text alone by default (the paper's sentiment and topic rewards).

:func:`check_reward_source` reads only the model's config.json and its kind (fairhpc/rewards/), so a bad
setting fails before any model is built; a classifier without the target label is refused naming the label
and the labels it has, and a pairwise preference model or an ArmoRM directory, which fairhpc/rewards/ scores
otherwise, is refused naming its kind.
"""

from __future__ import annotations

import torch

from fairhpc.errors import ConfigError


def _label_index(config, target: str | None, name: str) -> int | None:
    """Index of ``target`` in the classifier config's labels (None for a one-output model)."""
    n = int(getattr(config, "num_labels", 1) or 1)
    labels = {int(i): str(lab) for i, lab in (getattr(config, "id2label", None) or {}).items()}
    if n == 1:
        if target is not None:
            raise ConfigError(f"pg.target_label: {target!r}, but the reward model {name} has a single output (a "
                              "scalar reward, no labels); remove pg.target_label")
        return None
    if target is None:
        raise ConfigError(f"pg.target_label: the reward model {name} is a classifier with {n} labels "
                          f"({', '.join(labels.get(i, str(i)) for i in range(n))}); set pg.target_label to the "
                          "label whose probability is the reward")
    for i, lab in labels.items():
        if lab == target:
            return i
    if target.lstrip("-").isdigit() and 0 <= int(target) < n:
        return int(target)
    raise ConfigError(f"pg.target_label: the classifier {name} has no label {target!r}; its labels are "
                      f"{', '.join(f'{i}={labels.get(i, str(i))}' for i in range(n))}")


def check_reward_source(pg) -> int | None:
    """Refuse a missing reward model or a target label it lacks; returns the label index (None: scalar)."""
    from transformers import AutoConfig

    from fairhpc.config import check_model_path

    if pg.reward_model is None:
        raise ConfigError("pg.reward_model: not set; give a reward model directory (e.g. a train-rm run's "
                          "final/), a sequence classifier, or train the synthetic task's classifier with "
                          "`fairhpc pg-classifier --out DIR` (docs/pg.md)")
    check_model_path("pg.reward_model", pg.reward_model)
    from fairhpc.rewards import require_scalar

    kind = require_scalar(pg.reward_model, "pg.reward_model", "policy gradient needs one reward per response")
    if kind == "armo":
        raise ConfigError(f"pg.reward_model: {pg.reward_model} is an ArmoRM directory; policy gradient reads a "
                          "sequence classifier (a train-rm run's final/ or a label classifier)")
    try:
        config = AutoConfig.from_pretrained(pg.reward_model)
    except OSError as e:
        raise ConfigError(f"pg.reward_model: cannot read the configuration of {pg.reward_model!r}: {e}") from None
    return _label_index(config, pg.target_label, pg.reward_model)


class RewardSource:
    """A frozen reward model on ``device`` with its own tokenizer; :meth:`score` -> [B] float32 rewards."""

    def __init__(self, pg, device, dtype=None, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from fairhpc.tokenizer import ensure_pad_and_template

        self.label = check_reward_source(pg)
        self.tokenizer = ensure_pad_and_template(AutoTokenizer.from_pretrained(pg.reward_model))
        self.model = AutoModelForSequenceClassification.from_pretrained(pg.reward_model, dtype=dtype)
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.requires_grad_(False).eval().to(device)
        self.device, self.max_length = device, max_length
        mode = pg.reward_input
        self.conversation = (self.label is None) if mode == "auto" else mode == "conversation"

    def texts(self, prompts: list[list[dict]] | list[str], responses: list[str]) -> list[str]:
        if not self.conversation:
            return responses
        out = []
        for p, r in zip(prompts, responses):
            msgs = p if isinstance(p, list) else [{"role": "user", "content": p}]
            out.append(self.tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": r}],
                                                          tokenize=False))
        return out

    @torch.no_grad()
    def score(self, prompts, responses: list[str]) -> torch.Tensor:
        texts = self.texts(prompts, responses)
        add_special = not self.conversation  # a chat template writes its own special tokens
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_length, add_special_tokens=add_special)
        logits = self.model(input_ids=enc["input_ids"].to(self.device),
                            attention_mask=enc["attention_mask"].to(self.device)).logits.float()
        if self.label is None:
            return logits[:, 0]
        return torch.softmax(logits, -1)[:, self.label]
