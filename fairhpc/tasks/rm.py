"""Reward model (``fairhpc train-rm``): a scalar head scores chosen and rejected responses; the margin
r_chosen - r_rejected feeds the Bradley-Terry utility and the fairness objective (bt, fr, fc;
docs/method.md)."""

from __future__ import annotations

import torch

from fairhpc.tasks.preference import PreferenceTask, stack_pair


class RewardModelTask(PreferenceTask):
    name = "rm"
    description = "a fair reward model"
    loss_kind = "rm"

    # model.head: linear (one scalar head) or moe (model.moe_experts gated scalar heads; fairhpc/models.py)
    def build_tiny(self, tiny_cfg, tokenizer, attn):
        from fairhpc.models import build_tiny_reward_model

        m = self.cfg.model
        return build_tiny_reward_model(tiny_cfg, tokenizer, attn, head=m.head, experts=m.moe_experts)

    def load_pretrained(self, name_or_path, dtype, attn_implementation, tokenizer):
        from fairhpc.models import load_reward_model

        m = self.cfg.model
        return load_reward_model(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                 tokenizer=tokenizer, head=m.head, experts=m.moe_experts)

    def summary_fields(self) -> dict:
        m = self.cfg.model
        return {**super().summary_fields(), "head": m.head,
                **({"moe_experts": m.moe_experts} if m.head == "moe" else {})}

    def margin_inputs(self, engine, model, batch, split):
        from fairhpc.models import sequence_rewards

        ids, mask, _ = stack_pair(batch, self.pad_id, engine.device)
        b = batch["chosen_input_ids"].shape[0]
        r = sequence_rewards(model, ids, mask)  # [2B]
        return r[:b], r[b:]

    def margins(self, inputs) -> torch.Tensor:
        chosen, rejected = inputs
        return chosen - rejected

    def finish(self, engine) -> None:
        """A moe head also marks final/ with fairhpc_model.json (kind moe; fairhpc/rewards/base.py)."""
        import torch.distributed as dist

        m = self.cfg.model
        if m.head == "moe":
            if engine.is_main:
                from fairhpc.rewards.base import write_marker

                write_marker(engine.run.final, {"kind": "moe", "experts": m.moe_experts})
            dist.barrier()
        super().finish(engine)

    def run_then_eval(self, engine, args) -> None:
        """`fairhpc eval-rm` on rank 0 with the model in memory (ZeRO-3: read back from RUN/final, since
        the parameters are partitioned), writing RUN/eval/ exactly as the command does."""
        import torch.distributed as dist

        from fairhpc.evaluation.cli import run_eval_rm

        if engine.is_main:
            held = engine.engine.module if self.cfg.train.zero_stage != 3 else None
            run_eval_rm(args, model=held, tokenizer=self.tokenizer if held is not None else None)
        dist.barrier()


TASK = RewardModelTask
