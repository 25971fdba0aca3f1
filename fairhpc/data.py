"""Preference data for training and evaluation: tokenizing pairs, the dataset, the collator, and the run's
train / eval datasets.  Where rows come from is :mod:`fairhpc.sources`; how a row becomes a
:class:`PreferenceExample` (standard, TRL, HH formats) is :mod:`fairhpc.formats`.  The names of both that
other modules use are re-exported here.

Tokenization (:func:`tokenize_example`): prompt = chat template with the generation prompt, response = the
rest of the rendered conversation, tokenized separately.  Labels are -100 on prompt tokens.  When
prompt + longer response exceeds ``max_length`` the prompt is cut (``truncation_side`` left: its oldest
tokens, keeping a leading bos; right: its end) only as far as needed but never below
``max_prompt_length``, then each response is cut at its end to fit.
"""

from __future__ import annotations

import os
from collections import Counter

from fairhpc import registry
from fairhpc.errors import SKIP_REASONS, ConfigError, DataError
from fairhpc.formats import PreferenceExample, detect_format, load_preferences, synthetic_examples
from fairhpc.sources import DATA_SUFFIXES, FILE_SUFFIXES, Row, iter_source

__all__ = [
    "DATA_SUFFIXES", "FILE_SUFFIXES", "IGNORE_INDEX", "SKIP_REASONS", "DataError", "PreferenceCollator",
    "PreferenceDataset", "PreferenceExample", "Row", "build_datasets", "detect_format", "iter_source",
    "load_preferences", "render_messages", "synthetic_examples", "tokenize_example",
]

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------- tokenization
def render_messages(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Text of a conversation through the tokenizer's chat template (HH-style fallback if it has none)."""
    from fairhpc.tokenizer import PLAIN_CHAT_TEMPLATE

    template = getattr(tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _adds_bos(tokenizer) -> bool:
    """Whether plain ``tokenizer(text)`` prepends bos (then a rendered prompt must start with it too)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _encode_pair(ex: PreferenceExample, tokenizer):
    """(prompt ids, chosen response ids, rejected response ids) before truncation."""
    prompt_text = render_messages(tokenizer, ex.prompt, add_generation_prompt=True)
    resp_texts = []
    for resp in (ex.chosen, ex.rejected):
        full = render_messages(tokenizer, ex.prompt + resp)
        if full.startswith(prompt_text):
            resp_texts.append(full[len(prompt_text):])
        else:  # a template that renders the prompt differently once a reply follows: split where they part
            k = len(os.path.commonprefix([prompt_text, full]))
            resp_texts.append(full[k:])
    enc = tokenizer([prompt_text, *resp_texts], add_special_tokens=False)["input_ids"]
    prompt_ids = list(enc[0])
    if _adds_bos(tokenizer) and prompt_ids[:1] != [tokenizer.bos_token_id]:
        prompt_ids.insert(0, tokenizer.bos_token_id)
    return prompt_ids, list(enc[1]), list(enc[2])


def _truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
              max_prompt_length: int, truncation_side: str, bos_id: int | None):
    """Cut prompt (shared by both responses) and responses to fit ``max_length``; see the module docstring."""
    if truncation_side not in registry.TRUNCATION_SIDES:
        raise ConfigError(f"data.truncation_side: unknown side {truncation_side!r}; allowed: "
                          f"{', '.join(registry.TRUNCATION_SIDES)}")
    longest = max(len(chosen), len(rejected))
    budget = min(len(prompt), max(max_prompt_length, max_length - longest))
    if budget < len(prompt):
        if truncation_side == "right":
            prompt = prompt[:budget]
        elif bos_id is not None and prompt[:1] == [bos_id] and budget >= 2:
            prompt = prompt[:1] + prompt[len(prompt) - budget + 1:]   # drop the oldest tokens, keep bos
        else:
            prompt = prompt[len(prompt) - budget:]
    room = max_length - len(prompt)
    return prompt, chosen[:room], rejected[:room]


def tokenize_example(ex: PreferenceExample, tokenizer, max_length: int, max_prompt_length: int,
                     truncation_side: str = "left") -> dict[str, list[int]]:
    """{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"} (lists of ints; labels
    are -100 on the prompt).  Sequences have at most ``max_length`` tokens."""
    return _tokenize(ex, tokenizer, max_length, max_prompt_length, truncation_side)[0]


def _tokenize(ex, tokenizer, max_length, max_prompt_length, truncation_side):
    if not 0 < max_prompt_length < max_length:
        raise ConfigError(f"need 0 < max_prompt_length < max_length, got {max_prompt_length}, {max_length}")
    p0, c0, r0 = _encode_pair(ex, tokenizer)
    p, c, r = _truncate(p0, c0, r0, max_length, max_prompt_length, truncation_side, tokenizer.bos_token_id)
    out = {"chosen_input_ids": p + c, "chosen_labels": [IGNORE_INDEX] * len(p) + c,
           "rejected_input_ids": p + r, "rejected_labels": [IGNORE_INDEX] * len(p) + r}
    info = {"prompt_tokens": len(p0), "chosen_tokens": len(c0), "rejected_tokens": len(r0),
            "prompt_truncated": len(p) < len(p0), "response_truncated": len(c) < len(c0) or len(r) < len(r0)}
    return out, info


class PreferenceDataset:
    """Tokenized preference pairs (a map-style torch Dataset; tokenized once, up front).

    Item: chosen_input_ids / chosen_labels / rejected_input_ids / rejected_labels (lists of ints),
    index (position in the dataset) and category_id (index into ``.categories``; -1 without a category).
    """

    def __init__(self, examples: list[PreferenceExample], tokenizer, data_cfg, desc: str = "tokenizing"):
        from tqdm.auto import tqdm

        self.examples = list(examples)
        self.categories = sorted({ex.category for ex in self.examples if ex.category is not None})
        cat_id = {c: i for i, c in enumerate(self.categories)}
        self.items, infos = [], []
        quiet = len(self.examples) < 2000
        for i, ex in enumerate(tqdm(self.examples, desc=desc, unit="pair", disable=quiet)):
            item, info = _tokenize(ex, tokenizer, data_cfg.max_length, data_cfg.max_prompt_length,
                                   data_cfg.truncation_side)
            item["index"] = i
            item["category_id"] = cat_id.get(ex.category, -1)
            self.items.append(item)
            infos.append(info)
        self.token_stats = _token_stats(infos)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _token_stats(infos: list[dict]) -> dict:
    if not infos:
        return {}
    n = len(infos)
    return {"prompt_tokens_mean": sum(x["prompt_tokens"] for x in infos) / n,
            "chosen_tokens_mean": sum(x["chosen_tokens"] for x in infos) / n,
            "rejected_tokens_mean": sum(x["rejected_tokens"] for x in infos) / n,
            "prompt_truncated": sum(x["prompt_truncated"] for x in infos),
            "response_truncated": sum(x["response_truncated"] for x in infos)}


class PreferenceCollator:
    """List of dataset items -> batch of tensors, right-padded per side.

    chosen_input_ids / chosen_attention_mask / chosen_labels [B, Lc], rejected_* [B, Lr] (ids padded with
    ``pad_token_id``, mask 0 and labels -100 on padding), index [B], category_id [B].
    """

    def __init__(self, pad_token_id: int):
        if pad_token_id is None:
            raise ValueError("PreferenceCollator needs a pad token id (the tokenizer has no pad token)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: list[dict]) -> dict:
        import torch

        batch = {}
        for side in ("chosen", "rejected"):
            seqs = [it[f"{side}_input_ids"] for it in items]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(items), width), dtype=torch.long)
            labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
            for b, it in enumerate(items):
                n = len(it[f"{side}_input_ids"])
                ids[b, :n] = torch.as_tensor(it[f"{side}_input_ids"], dtype=torch.long)
                labels[b, :n] = torch.as_tensor(it[f"{side}_labels"], dtype=torch.long)
                mask[b, :n] = 1
            batch[f"{side}_input_ids"] = ids
            batch[f"{side}_attention_mask"] = mask
            batch[f"{side}_labels"] = labels
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        batch["category_id"] = torch.tensor([it["category_id"] for it in items], dtype=torch.long)
        return batch


# -------------------------------------------------------------------------------------- run datasets
def _load_split(data_cfg, key: str):
    """(examples, stats) of data.train / data.eval."""
    source = getattr(data_cfg, key)
    limit = data_cfg.max_train_examples if key == "train" else data_cfg.max_eval_examples
    split = "train" if key == "train" else "eval"
    if source == "synthetic":
        from fairhpc.synthetic import oracle_accuracy, split_seed

        exs = synthetic_examples(data_cfg, split)
        if limit is not None:
            exs = exs[:limit]
        s = data_cfg.synthetic
        stats = {"source": "synthetic", "rows_read": len(exs), "kept": len(exs), "skipped": {},
                 "synthetic": {"n": len(exs), "seed": split_seed(s.seed, split), "length_bias": s.length_bias,
                               "oracle_accuracy": oracle_accuracy(exs) if exs else None}}
        return exs, stats
    hub_split = data_cfg.train_split if key == "train" else data_cfg.eval_split
    exs, skipped = load_preferences(source, split=hub_split, fmt=data_cfg.format, bad_rows=data_cfg.bad_rows,
                                    limit=limit)
    stats = {"source": source, "split": hub_split, "format": data_cfg.format, "bad_rows": data_cfg.bad_rows,
             "rows_read": len(exs) + sum(skipped.values()), "kept": len(exs),
             "skipped": dict(sorted(skipped.items()))}
    if not exs:
        detail = f" (skipped: {stats['skipped']})" if skipped else ""
        raise DataError(f"{source}: no usable preference pairs for data.{key}{detail}")
    return exs, stats


def build_datasets(run_cfg, tokenizer):
    """(train PreferenceDataset, eval PreferenceDataset or None, stats) of a RunConfig's data section.

    stats (written to data_stats.json): per split the source, rows read / kept / skipped by reason,
    pairs per category, token lengths and truncation counts (and the oracle accuracy of synthetic data).
    """
    d = run_cfg.data
    stats: dict = {"max_length": d.max_length, "max_prompt_length": d.max_prompt_length,
                   "truncation_side": d.truncation_side}
    exs, stats["train"] = _load_split(d, "train")
    eval_exs = None
    if d.eval is not None:
        eval_exs, stats["eval"] = _load_split(d, "eval")
        if not eval_exs:
            eval_exs = None
    train_ds = PreferenceDataset(exs, tokenizer, d, desc="tokenizing train")
    eval_ds = PreferenceDataset(eval_exs, tokenizer, d, desc="tokenizing eval") if eval_exs else None
    for name, ds in (("train", train_ds), ("eval", eval_ds)):
        if ds is not None:
            counts = Counter(ex.category or "none" for ex in ds.examples)
            stats[name]["categories"] = dict(sorted(counts.items()))
            stats[name]["tokens"] = ds.token_stats
    return train_ds, eval_ds, stats
