"""DPO policy (``fairhpc train-dpo``): the implicit reward margin
beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))] feeds the DPO utility and the
fairness objective (dpo, fr, fc; docs/method.md).

The frozen reference is the initial policy (tiny models) or ``model.ref_name_or_path``.  With
``train.precompute_ref`` its log-probs of every example are computed once after the engine starts,
cached in RUN/ref_logps_<split>.pt, and the reference is freed; otherwise it runs in every step.

A step has two phases.  Phase 1: the sequence log-probs of chosen and rejected (2B rows, one forward) for
the policy, and for the reference when not cached, with ``model.logprob_impl`` (fairhpc/logprobs.py): the
LM head yields the per-sequence sums chunk by chunk, so no [2B, T, V] logits exist (``eager`` keeps the full
logits).  Phase 2: the fairness objective on the B margins (``objective.loss_impl``: the fused kernel on
CUDA); its gradient of the margins flows back into phase 1's chunked backward (docs/memory.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from fairhpc.tasks.preference import PreferenceTask, stack_pair


class DPOTask(PreferenceTask):
    name = "dpo"
    description = "a fair DPO policy"
    loss_kind = "dpo"

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.ref_model = None
        self.ref_cache: dict[str, torch.Tensor] = {}
        self.logprob_impl = cfg.model.logprob_impl  # resolved for the device in check_device

    def check_device(self, device) -> None:
        from fairhpc.logprobs import resolve_impl

        super().check_device(device)
        # a forced triton that cannot run here fails now, before any model is built
        self.logprob_impl = resolve_impl(self.cfg.model.logprob_impl, device)

    def build_model(self, engine):
        from fairhpc.logprobs import chunkable, configure, find_head

        model = super().build_model(engine)
        found = find_head(model)
        why = "it has no Linear LM head" if found is None else chunkable(found[0])
        if why is not None and self.logprob_impl != "eager":
            if self.cfg.model.logprob_impl != "auto":
                from fairhpc.errors import ConfigError

                raise ConfigError(f"model.logprob_impl={self.cfg.model.logprob_impl}: {self.cfg.model.name_or_path} "
                                  f"cannot take the chunked path: {why}; use eager (or auto)")
            self.logprob_impl = "eager"
        return configure(model, self.logprob_impl, self.cfg.model.logprob_chunk_tokens)

    def _logps(self, model, ids, mask, labels) -> torch.Tensor:
        """Phase 1: [2B] summed label log-probs (a sequence without label tokens is refused)."""
        from fairhpc.models import sequence_logps

        return sequence_logps(model, ids, mask, labels, self.logprob_impl,
                              chunk_tokens=self.cfg.model.logprob_chunk_tokens, allow_empty=False)

    @staticmethod
    def build_tiny(tiny_cfg, tokenizer, attn):
        from fairhpc.models import build_tiny_policy

        return build_tiny_policy(tiny_cfg, tokenizer, attn)

    @staticmethod
    def load_pretrained(name_or_path, dtype, attn_implementation, tokenizer):
        from fairhpc.models import load_policy

        return load_policy(name_or_path, dtype=dtype, attn_implementation=attn_implementation, tokenizer=tokenizer)

    # ---- the reference
    def before_engine(self, engine, model) -> None:
        """The frozen reference: a copy of the initial policy, or model.ref_name_or_path."""
        import copy

        from fairhpc.models import resolve_attn_implementation

        m = self.cfg.model
        if m.name_or_path == "tiny" and m.ref_name_or_path in (None, "tiny"):
            ref = copy.deepcopy(model)  # the reference is the initial policy
        else:
            ref = self.load_pretrained(m.ref_name_or_path or m.name_or_path,
                                       dtype=torch.bfloat16 if engine.precision == "bf16" else None,
                                       attn_implementation=resolve_attn_implementation(m.attn_implementation, engine.device),
                                       tokenizer=self.tokenizer)
        self.ref_model = engine.frozen_model(ref)

    def setup(self, engine) -> None:
        if not self.cfg.train.precompute_ref:
            return
        self.ref_cache["train"] = self._ref_logps_cached(engine, "train", engine.train_ds)
        if engine.eval_ds is not None:
            self.ref_cache["eval"] = self._ref_logps_cached(engine, "eval", engine.eval_ds)
        self.ref_model = None  # freed: its log-probs are all we need

    @torch.no_grad()
    def _ref_logps(self, ids, mask, labels):
        return self._logps(self.ref_model, ids, mask, labels)

    def _ref_pair_logps(self, engine, batch) -> torch.Tensor:
        """[b, 2] reference log-probs (chosen, rejected) of a batch."""
        lp = self._ref_logps(*stack_pair(batch, self.pad_id, engine.device))
        b = batch["index"].shape[0]
        return torch.stack([lp[:b], lp[b:]], 1)

    def cache_key(self, engine, ds) -> dict:
        """What determines the cached reference log-probs: the reference model (its name, and for a local
        folder the size and time of each weight file; for a tiny model its shape and seed), the numeric
        precision, the log-prob implementation (its rounding), and the token ids and labels of every example (data, tokenizer, max lengths, truncation)."""
        m = self.cfg.model
        ref = m.ref_name_or_path or m.name_or_path
        key = {"reference": ref, "precision": engine.precision, "logprob_impl": self.logprob_impl,
               "examples": len(ds)}
        if ref == "tiny":
            key["tiny"] = {**dataclasses.asdict(m.tiny), "seed": self.cfg.seed}
        elif Path(ref).is_dir():
            key["weights"] = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(Path(ref).iterdir())
                              if f.suffix in (".safetensors", ".bin", ".pt") or f.name == "config.json"}
        h = hashlib.sha256()
        for item in ds:
            for field in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
                h.update(np.asarray(item[field], dtype=np.int64).tobytes())
                h.update(b"|")
        key["tokens_sha256"] = h.hexdigest()
        return key

    def _ref_logps_cached(self, engine, split: str, ds) -> torch.Tensor:
        """[N, 2] reference log-probs (chosen, rejected) of every example, computed once on all ranks.

        RUN/ref_logps_<split>.pt holds {"key": cache_key, "table": [N, 2]}; it is used only when every rank
        can read it and its key equals this run's (a rank without the file, e.g. no shared filesystem, makes
        all ranks recompute together: no rank waits alone in a collective)."""
        path = engine.run.ref_logps(split)
        key = self.cache_key(engine, ds)
        cached, why = None, "none cached"
        if path.exists():
            try:
                stored = torch.load(path, weights_only=False)
                if isinstance(stored, dict) and stored.get("key") == key:
                    cached = stored["table"]
                else:
                    old = stored.get("key", {}) if isinstance(stored, dict) else {}
                    why = "stale: " + ", ".join(k for k in sorted(set(key) | set(old)) if key.get(k) != old.get(k))
            except Exception as e:  # noqa: BLE001 - an unreadable cache is recomputed
                why = f"unreadable ({type(e).__name__})"
        if engine.all_ranks(cached is not None):
            return cached
        if engine.is_main and path.exists():
            print(f"[fairhpc] {path}: {why}; recomputing the reference log-probs", flush=True)
        table = engine.gather_by_index(ds, lambda batch: self._ref_pair_logps(engine, batch),
                                       desc=f"reference log-probs ({split})", fill=0.0)
        if engine.is_main:
            tmp = path.with_suffix(".tmp")
            torch.save({"key": key, "table": table}, tmp)
            os.replace(tmp, path)
        return table

    # ---- the objective
    def margin_inputs(self, engine, model, batch, split):
        ids, mask, labels = stack_pair(batch, self.pad_id, engine.device)
        b = batch["chosen_input_ids"].shape[0]
        lp = self._logps(model, ids, mask, labels)  # [2B], phase 1
        if self.ref_cache:
            ref = self.ref_cache[split][batch["index"]].to(engine.device)
            rc, rr = ref[:, 0], ref[:, 1]
        else:
            ref = self._ref_logps(ids, mask, labels)
            rc, rr = ref[:b], ref[b:]
        return lp[:b], lp[b:], rc, rr

    def margins(self, inputs) -> torch.Tensor:
        pc, pr, rc, rr = inputs
        return self.cfg.objective.beta * ((pc - rc) - (pr - rr))

    def summary_impl(self) -> dict:
        return {**super().summary_impl(), "logprob_impl": self.logprob_impl}


TASK = DPOTask
