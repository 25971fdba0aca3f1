"""Shared by the tasks that learn from preference pairs (chosen vs rejected) with the fairness objective.

A subclass says how a micro-batch becomes the objective's inputs (``margin_inputs``), which margin kind
the loss takes (``loss_kind``: "rm" for reward differences, "dpo" for policy/reference log-probs) and
which model it trains (``build_tiny`` / ``load_pretrained``).  Chosen and rejected go through the model in
one batch of 2B rows.
"""

from __future__ import annotations

import dataclasses

import torch

from fairhpc.losses import METRIC_KEYS
from fairhpc.tasks.base import Task


def pad_cat(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    """Concatenate [B, La] and [B, Lb] along the batch after right-padding to the same length."""
    n = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, n - a.shape[1]), value=value)
    b = torch.nn.functional.pad(b, (0, n - b.shape[1]), value=value)
    return torch.cat([a, b], 0)


def stack_pair(batch: dict, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[2B, L] input ids, attention mask and labels: the chosen rows, then the rejected rows."""
    ids = pad_cat(batch["chosen_input_ids"], batch["rejected_input_ids"], pad_id).to(device)
    mask = pad_cat(batch["chosen_attention_mask"], batch["rejected_attention_mask"], 0).to(device)
    labels = pad_cat(batch["chosen_labels"], batch["rejected_labels"], -100).to(device)
    return ids, mask, labels


class PreferenceTask(Task):
    metric_keys = METRIC_KEYS
    progress_keys = ("loss", "accuracy", "f")
    loss_kind: str

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        from fairhpc.data import PreferenceCollator

        self.pad_id = tokenizer.pad_token_id
        self._collator = PreferenceCollator(self.pad_id)
        self.loss_fn = None
        self._stats = None   # scope "step": the statistics of the current optimizer step
        self._last = None    # the last micro-batch's LossOutput

    @property
    def progress_label(self) -> str:
        return f"{self.name} {self.cfg.objective.mode}"

    # ---- data
    def build_datasets(self):
        from fairhpc.data import build_datasets

        return build_datasets(self.cfg, self.tokenizer)

    def collate(self, rows: list[dict]) -> dict:
        return self._collator(rows)

    # ---- model
    @staticmethod
    def build_tiny(tiny_cfg, tokenizer, attn):
        raise NotImplementedError

    @staticmethod
    def load_pretrained(name_or_path, dtype, attn_implementation, tokenizer):
        raise NotImplementedError

    def build_model(self, engine):
        from fairhpc.models import resolve_attn_implementation

        m = self.cfg.model
        attn = resolve_attn_implementation(m.attn_implementation, engine.device)
        if m.name_or_path == "tiny":
            return self.build_tiny(m.tiny, self.tokenizer, attn)
        dtype = torch.bfloat16 if engine.precision == "bf16" else None
        return self.load_pretrained(m.name_or_path, dtype=dtype, attn_implementation=attn,
                                    tokenizer=self.tokenizer)

    def check_device(self, device) -> None:
        from fairhpc.losses import PreferenceLoss

        # the objective's implementation is fixed (and checked) before any model is built
        self.loss_fn = PreferenceLoss(self.loss_kind, self.cfg.objective, device, torch.float32)

    # ---- the objective
    def margin_inputs(self, engine, model, batch: dict, split: str) -> tuple[torch.Tensor, ...]:
        """The loss inputs of a micro-batch: (chosen, rejected) rewards, or four log-prob tensors."""
        raise NotImplementedError

    def margins(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        raise NotImplementedError

    def begin_step(self, engine, model, batches: list[dict]) -> None:
        """Scope ``step``: the fairness statistics of the whole optimizer step (all micro-batches of all
        ranks), from one pass without a graph and one collective; each micro-batch's loss then holds them
        fixed, so the gradients add up to those of one process over the whole step (docs/method.md)."""
        if self.cfg.objective.scope != "step":
            return
        from fairhpc.losses import step_statistics

        with torch.no_grad():
            margins = [self.margins(self.margin_inputs(engine, model, b, "train")) for b in batches]
        self._stats = step_statistics(margins, self.cfg.objective, engine.group)

    def loss(self, engine, model, batch: dict):
        from fairhpc.losses import loss_scale

        o = self.cfg.objective
        stats = self._stats if o.scope == "step" else None
        self._last = self.loss_fn(*self.margin_inputs(engine, model, batch, "train"), group=engine.group,
                                  stats=stats)
        # DeepSpeed divides by grad_accum and averages over ranks; global / step losses are already the
        # whole step's, so undo what does not apply (losses.loss_scale)
        loss = self._last.loss * loss_scale(o.scope, engine.world, self.cfg.train.grad_accum)
        return loss, self._last.metrics

    def nonfinite_hint(self) -> str | None:
        from fairhpc.losses import check_finite

        try:
            check_finite(self._last, self.cfg.objective)
        except FloatingPointError as e:
            return str(e)
        return None

    @torch.no_grad()
    def evaluate(self, engine, model, dataset) -> dict:
        """The objective's metrics over the held-out margins of all ranks, and accuracy per category."""
        from fairhpc.losses import fairness_loss_from_margins

        margins = engine.gather_by_index(
            dataset, lambda batch: self.margins(self.margin_inputs(engine, model, batch, "eval")))
        obj = dataclasses.replace(self.cfg.objective, scope="micro", reduction="mean")
        out = {k: float(v) for k, v in fairness_loss_from_margins(margins, obj).metrics.items()}
        cats = getattr(dataset, "categories", None)
        if cats:
            cat_ids = torch.tensor([dataset[i]["category_id"] for i in range(len(dataset))])
            out["accuracy_by_category"] = {
                c: float((margins[cat_ids == j] > 0).float().mean()) for j, c in enumerate(cats)
                if (cat_ids == j).any()}
        return out

    # ---- summary.json
    def summary_fields(self) -> dict:
        o = self.cfg.objective
        return {"mode": o.mode, "alpha": o.alpha, "tau": o.tau, "gamma": o.gamma, "beta": o.beta}

    def summary_impl(self) -> dict:
        return {"loss_impl": self.loss_fn.impl}
