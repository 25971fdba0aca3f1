"""Supervised fine-tuning (``fairhpc train-sft``): a causal LM learns target responses by next-token NLL.

Data (``data.train`` / ``data.eval``, any source fairhpc.sources reads): rows with ``prompt`` (string or
messages) and ``completion`` (string or assistant messages), the prompt-completion form that
``fairhpc aggregate`` writes to sft.jsonl (the aggregate ranking's top response); or preference rows, whose
``chosen`` response is the target.  An optional ``category`` is kept and the held-out NLL is reported per
category.  Tokenization is the preference tasks' (chat template, labels -100 on the prompt, the same
truncation rules), so SFT and DPO see identical token sequences.

Loss: the summed log-prob of the target tokens (fairhpc.models.sequence_logps) over the micro-batch,
negated and divided by its number of target tokens: mean NLL per token.  The objective mode is ``sft``
(utility only; registry.MODES).
"""

from __future__ import annotations

from collections import Counter

import torch

from fairhpc.errors import DataError
from fairhpc.tasks.base import Task

IGNORE_INDEX = -100


def _target_rows(source: str, split: str, bad_rows: str, limit: int | None):
    """(PreferenceExample-like triples (prompt msgs, target msgs, category, where), skipped Counter)."""
    from fairhpc.formats import _text_or_messages, detect_format, load_preferences
    from fairhpc.sources import iter_source

    rows = iter_source(source, split)
    first = []
    for r in rows:
        first.append(r)
        if r.error is None and isinstance(r.value, dict):
            break
    kind = None
    if first and first[-1].error is None and isinstance(first[-1].value, dict):
        v = first[-1].value
        kind = "completion" if "completion" in v else ("preferences" if detect_format(v) else None)
    if kind == "preferences":
        exs, skipped = load_preferences(source, split, "auto", bad_rows, limit)
        return [(ex.prompt, ex.chosen, ex.category, ex.source) for ex in exs], skipped
    out, skipped = [], Counter()

    def all_rows():
        yield from first
        yield from rows

    for r in all_rows():
        if limit is not None and len(out) >= limit:
            break
        try:
            if r.error is not None:
                raise r.error
            row = r.value
            if not isinstance(row, dict):
                raise DataError(f"{r.where}: expected an object with prompt and completion", "not_an_object")
            for key in ("prompt", "completion"):
                if row.get(key) is None:
                    raise DataError(f"{r.where}: field {key!r}: missing (columns present: "
                                    f"{', '.join(row) or 'none'}); SFT rows have prompt + completion, or "
                                    f"prompt/chosen/rejected preferences", "missing_field")
            p = _text_or_messages(row["prompt"], "prompt", r.where, "user")
            c = _text_or_messages(row["completion"], "completion", r.where, "assistant")
            if not c or not any(m["content"].strip() for m in c):
                raise DataError(f"{r.where}: field 'completion': empty response", "empty_response")
            cat = row.get("category")
            if cat is not None and not isinstance(cat, str):
                raise DataError(f"{r.where}: field 'category': expected a string", "wrong_type")
            out.append((p, c, cat, r.source))
        except DataError as e:
            if bad_rows == "error" or e.reason is None:
                raise
            skipped[e.reason] += 1
    return out, skipped


class SFTDataset:
    """Tokenized (prompt, target) rows: input_ids / labels (-100 on the prompt), index, category_id."""

    def __init__(self, triples, tokenizer, data_cfg):
        from fairhpc.data import _tokenize
        from fairhpc.formats import PreferenceExample

        self.categories = sorted({c for _, _, c, _ in triples if c is not None})
        cat_id = {c: i for i, c in enumerate(self.categories)}
        self.items, self.truncated = [], 0
        for i, (p, c, cat, src) in enumerate(triples):
            # the preference tokenization with the target as both responses (identical cuts)
            ex = PreferenceExample(prompt=p, chosen=c, rejected=c, category=cat, source=src)
            tok, info = _tokenize(ex, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length,
                                  data_cfg.truncation_side)
            self.truncated += info["prompt_truncated"] or info["response_truncated"]
            self.items.append({"input_ids": tok["chosen_input_ids"], "labels": tok["chosen_labels"], "index": i,
                               "category_id": cat_id.get(cat, -1)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class SFTTask(Task):
    name = "sft"
    description = "an SFT policy (next-token NLL on target responses)"
    metric_keys = ("loss", "tokens")
    progress_keys = ("loss",)

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.pad_id = tokenizer.pad_token_id

    # ---- data
    def _split(self, key: str):
        d = self.cfg.data
        source = getattr(d, key)
        if source == "synthetic":
            from fairhpc.formats import synthetic_examples

            exs = synthetic_examples(d, "train" if key == "train" else "eval")
            triples, skipped = [(ex.prompt, ex.chosen, ex.category, ex.source) for ex in exs], Counter()
        else:
            split = d.train_split if key == "train" else d.eval_split
            triples, skipped = _target_rows(source, split, d.bad_rows,
                                            d.max_train_examples if key == "train" else d.max_eval_examples)
        if not triples:
            raise DataError(f"{source}: no usable SFT rows for data.{key}"
                            + (f" (skipped: {dict(sorted(skipped.items()))})" if skipped else ""))
        ds = SFTDataset(triples, self.tokenizer, d)
        stats = {"source": source, "rows_read": len(triples) + sum(skipped.values()), "kept": len(triples),
                 "skipped": dict(sorted(skipped.items())), "truncated": ds.truncated,
                 "categories": dict(sorted(Counter(c or "none" for _, _, c, _ in triples).items()))}
        return ds, stats

    def build_datasets(self):
        d = self.cfg.data
        train, st = self._split("train")
        stats = {"max_length": d.max_length, "train": st}
        ev = None
        if d.eval is not None:
            ev, stats["eval"] = self._split("eval")
        return train, ev, stats

    def collate(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for b, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[b, :n] = torch.as_tensor(r["input_ids"])
            labels[b, :n] = torch.as_tensor(r["labels"])
            mask[b, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "index": torch.tensor([r["index"] for r in rows]),
                "category_id": torch.tensor([r["category_id"] for r in rows])}

    # ---- model
    def build_model(self, engine):
        from fairhpc.models import build_tiny_policy, load_policy, resolve_attn_implementation

        m = self.cfg.model
        attn = resolve_attn_implementation(m.attn_implementation, engine.device)
        if m.name_or_path == "tiny":
            return build_tiny_policy(m.tiny, self.tokenizer, attn)
        dtype = torch.bfloat16 if engine.precision == "bf16" else None
        return load_policy(m.name_or_path, dtype=dtype, attn_implementation=attn, tokenizer=self.tokenizer)

    # ---- objective
    def _sums(self, engine, model, batch):
        """(summed target log-probs [B], target tokens [B])."""
        from fairhpc.models import sequence_logps

        ids = batch["input_ids"].to(engine.device)
        mask = batch["attention_mask"].to(engine.device)
        labels = batch["labels"].to(engine.device)
        lp = sequence_logps(model, ids, mask, labels)
        return lp, (labels[:, 1:] != IGNORE_INDEX).sum(-1).to(lp.dtype)

    def loss(self, engine, model, batch):
        lp, n = self._sums(engine, model, batch)
        loss = -lp.sum() / n.sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "tokens": n.sum().detach()}

    def nonfinite_hint(self):
        return "the SFT loss is not finite: lower train.lr or check for empty targets"

    @torch.no_grad()
    def evaluate(self, engine, model, dataset) -> dict:
        table = engine.gather_by_index(dataset, lambda b: torch.stack(self._sums(engine, model, b), 1))
        lp, n = table[:, 0], table[:, 1]
        out = {"nll_per_token": float(-lp.sum() / n.sum().clamp(min=1)), "examples": len(dataset)}
        cats = getattr(dataset, "categories", None)
        if cats:
            ids = torch.tensor([dataset[i]["category_id"] for i in range(len(dataset))])
            out["nll_by_category"] = {c: float(-lp[ids == j].sum() / n[ids == j].sum().clamp(min=1))
                                      for j, c in enumerate(cats) if (ids == j).any()}
        return out

    def summary_fields(self) -> dict:
        return {"mode": self.cfg.objective.mode}


TASK = SFTTask
