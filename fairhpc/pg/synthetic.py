"""The synthetic policy-gradient task: a planted attribute and a classifier trained here to detect it.

Planted attribute: the response contains at least one *target word* (by default the synthetic generator's
quality words, fairhpc/synthetic.py QUALITY_WORDS: "clear", "correct", ...), as a whole word.  Each is one
token of the built-in tokenizer, so a tiny policy can learn to emit them within a few dozen steps; a
policy with random weights emits one in about 1 of 8 responses of 8 tokens (12 of 665 tokens).

``fairhpc pg-classifier --out DIR`` trains a tiny Llama sequence classifier (labels ``other`` /
``planted``) on texts of the kind such policies write: decoded random token sequences mixed with synthetic
words, half of them with target words inserted, each labelled by :func:`has_planted` of its decoded text.
DIR is a transformers model directory (config.json with id2label, safetensors, tokenizer) plus
``summary.json`` with the held-out accuracy.  A ``train-pg`` run uses it as ``pg.reward_model: DIR`` with
``pg.target_label: planted``; its reward is P(planted | response).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import torch

from fairhpc.synthetic import FILLER_WORDS, QUALITY_WORDS

LABELS = ("other", "planted")
TARGET_LABEL = "planted"


def has_planted(text: str, words=QUALITY_WORDS) -> bool:
    """Whether ``text`` contains one of ``words`` as a whole word (the ground truth of the classifier)."""
    return any(re.search(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", text) for w in words)


def _example(rng: random.Random, tokenizer, normal_ids: list[int], target_ids: list[int], positive: bool,
             max_tokens: int) -> tuple[str, int]:
    n = rng.randint(0, max_tokens)
    ids = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            ids.append(rng.choice(normal_ids))
        else:
            ids += tokenizer.encode(" " + rng.choice(FILLER_WORDS), add_special_tokens=False)
    if positive:
        for _ in range(rng.randint(1, 2)):
            ids.insert(rng.randint(0, len(ids)), rng.choice(target_ids))
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text, int(has_planted(text))


def make_examples(tokenizer, n: int, seed: int, max_tokens: int = 16) -> list[tuple[str, int]]:
    """``n`` (text, label) pairs, half of them made positive (labels from the decoded text)."""
    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    target_ids = [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in QUALITY_WORDS]
    normal_ids = [i for i in range(len(tokenizer)) if i not in special and i not in target_ids]
    return [_example(rng, tokenizer, normal_ids, target_ids, i % 2 == 0, max_tokens) for i in range(n)]


def _batch(tokenizer, rows):
    enc = tokenizer([t for t, _ in rows], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows])


def train_classifier(out: str | Path, steps: int = 300, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     hidden_size: int = 32, layers: int = 2, n_eval: int = 512) -> dict:
    """Train the planted-attribute classifier into ``out`` (see the module docstring); returns its summary."""
    from tqdm.auto import tqdm
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from fairhpc.io import atomic_write_json, check_output_dir
    from fairhpc.tokenizer import build_tokenizer

    out = check_output_dir(out)
    start = time.time()
    torch.manual_seed(seed)
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden_size,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, num_labels=len(LABELS),
                      id2label=dict(enumerate(LABELS)), label2id={lab: i for i, lab in enumerate(LABELS)})
    model = LlamaForSequenceClassification(cfg)
    train = make_examples(tok, steps * batch_size, seed)
    held = make_examples(tok, n_eval, seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.05, 1 - s / steps))
    model.train()
    bar = tqdm(range(steps), desc="pg-classifier", dynamic_ncols=True)
    for s in bar:
        ids, mask, y = _batch(tok, train[s * batch_size:(s + 1) * batch_size])
        loss = torch.nn.functional.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if s % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        ids, mask, y = _batch(tok, held)
        pred = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
    acc = float((pred == y).float().mean())
    tmp = out.with_name(out.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    summary = {"labels": list(LABELS), "target_label": TARGET_LABEL, "target_words": list(QUALITY_WORDS),
               "steps": steps, "batch_size": batch_size, "seed": seed, "heldout_examples": n_eval,
               "heldout_accuracy": acc, "heldout_positive_share": float(y.float().mean()),
               "train_time_s": time.time() - start}
    atomic_write_json(tmp / "summary.json", summary)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return summary
