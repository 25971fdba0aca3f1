"""Training the pairwise preference model (``fairhpc train-pair-pm``): a causal LM reads the prompt and two
responses in one sequence and answers with the token ``A`` or ``B`` (the template, its tokenization and the
margins: fairhpc/rewards/pair_pm.py).

Each pair is trained in both orders in the same micro-batch; in training each ordering is one example whose
margin is the log-odds of the right answer (:func:`~fairhpc.rewards.pair_pm.order_margins`), in evaluation
the pair's margin log P(chosen > rejected) - log P(rejected > chosen)
(:func:`~fairhpc.rewards.pair_pm.pair_margin`).  The margins feed the fairness objective as a reward
model's r_chosen - r_rejected does (modes bt, fr, fc).

The final model is a plain transformers causal LM (``AutoModelForCausalLM``) with its tokenizer; its
config.json records ``fairhpc_kind: pair_pm`` and final/fairhpc_model.json the template, so that the
evaluation commands score it pairwise (fairhpc/rewards/pair_pm.py, docs/reward_models.md).
"""

from __future__ import annotations

import torch

from fairhpc.errors import ConfigError
from fairhpc.rewards.pair_pm import (
    ANSWERS,
    KIND,
    PAIR_TEMPLATE,
    PairTokenizer,
    answer_gap,
    answer_token_ids,
    collate_sequences,
    order_margins,
    pair_margin,
    response_text,
    write_pair_marker,
)
from fairhpc.tasks.preference import PreferenceTask


# ------------------------------------------------------------------------------------------ data
class PairPMDataset:
    """Preference pairs tokenized in both orders: items ``ab`` (chosen at A), ``ba`` (chosen at B),
    ``index`` and ``category_id`` (index into ``.categories``, -1 without one)."""

    def __init__(self, examples, pair_tok: PairTokenizer, desc: str = "tokenizing"):
        from tqdm.auto import tqdm

        self.examples = list(examples)
        self.categories = sorted({ex.category for ex in self.examples if ex.category is not None})
        cat_id = {c: i for i, c in enumerate(self.categories)}
        self.items, infos = [], []
        for i, ex in enumerate(tqdm(self.examples, desc=desc, unit="pair", disable=len(self.examples) < 2000)):
            ab, ba, info = pair_tok(ex.prompt, response_text(ex.chosen), response_text(ex.rejected))
            self.items.append({"ab": ab, "ba": ba, "index": i, "category_id": cat_id.get(ex.category, -1)})
            infos.append(info)
        n = max(1, len(infos))
        self.token_stats = {
            "pair_tokens_mean": sum(x["pair_tokens"] for x in infos) / n,
            "context_tokens_mean": sum(x["context_tokens"] for x in infos) / n,
            "prompt_truncated": sum(x["prompt_truncated"] for x in infos),
            "response_truncated": sum(x["response_truncated"] for x in infos)} if infos else {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


# ------------------------------------------------------------------------------------------ the task
class PairPMTask(PreferenceTask):
    name = KIND
    description = "a pairwise preference model (answers A or B for two responses)"
    loss_kind = "rm"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        if cfg.model.head != "linear":
            raise ConfigError(f"model.head: {cfg.model.head!r} is a reward-model head of train-rm; a pairwise "
                              "preference model answers with its language-model head (leave model.head=linear)")
        self.answer_ids = answer_token_ids(tokenizer)  # before any data is read

    # ---- data
    def build_datasets(self):
        from collections import Counter

        from fairhpc.data import _load_split

        d = self.cfg.data
        pair_tok = PairTokenizer(self.tokenizer, d.max_length, d.max_prompt_length, d.truncation_side)
        stats: dict = {"max_length": d.max_length, "max_prompt_length": d.max_prompt_length,
                       "truncation_side": d.truncation_side, "template": PAIR_TEMPLATE,
                       "template_fixed_tokens": pair_tok.fixed}
        exs, stats["train"] = _load_split(d, "train")
        eval_exs = None
        if d.eval is not None:
            eval_exs, stats["eval"] = _load_split(d, "eval")
        train_ds = PairPMDataset(exs, pair_tok, "tokenizing train")
        eval_ds = PairPMDataset(eval_exs, pair_tok, "tokenizing eval") if eval_exs else None
        for name, ds in (("train", train_ds), ("eval", eval_ds)):
            if ds is not None:
                stats[name]["categories"] = dict(sorted(Counter(ex.category or "none" for ex in ds.examples).items()))
                stats[name]["tokens"] = ds.token_stats
        return train_ds, eval_ds, stats

    def collate(self, rows: list[dict]) -> dict:
        batch = collate_sequences([r["ab"] for r in rows] + [r["ba"] for r in rows], self.pad_id)
        batch["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        batch["category_id"] = torch.tensor([r["category_id"] for r in rows], dtype=torch.long)
        return batch

    # ---- model
    def build_tiny(self, tiny_cfg, tokenizer, attn):
        from fairhpc.models import build_tiny_policy

        return _mark(build_tiny_policy(tiny_cfg, tokenizer, attn))

    def load_pretrained(self, name_or_path, dtype, attn_implementation, tokenizer):
        from fairhpc.models import load_policy

        return _mark(load_policy(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                 tokenizer=tokenizer))

    # ---- the objective
    def margin_inputs(self, engine, model, batch, split):
        dev = engine.device
        z = answer_gap(model, batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                       batch["position_ids"].to(dev), self.answer_ids)
        b = batch["index"].shape[0]
        if split == "train":
            m = order_margins(z[:b], z[b:])
        else:
            m = pair_margin(z[:b], z[b:])
        return m, torch.zeros_like(m)

    def margins(self, inputs) -> torch.Tensor:
        chosen, rejected = inputs
        return chosen - rejected

    # ---- the end
    def finish(self, engine) -> None:
        """final/fairhpc_model.json (the kind and the template), then the --then-eval evaluation."""
        import torch.distributed as dist

        if engine.is_main:
            write_pair_marker(engine.run.final, self.tokenizer, self.cfg.data)
        dist.barrier()
        super().finish(engine)

    def run_then_eval(self, engine, args) -> None:
        """`fairhpc eval-rm` on rank 0 with the model in memory (ZeRO-3: read back from RUN/final)."""
        import torch.distributed as dist

        from fairhpc.evaluation.cli import run_eval_rm

        if engine.is_main:
            held = engine.engine.module if self.cfg.train.zero_stage != 3 else None
            run_eval_rm(args, model=held, tokenizer=self.tokenizer if held is not None else None)
        dist.barrier()

    def summary_fields(self) -> dict:
        return {**super().summary_fields(), "answer_tokens": list(ANSWERS)}


def _mark(model):
    model.config.fairhpc_kind = KIND
    return model


TASK = PairPMTask
