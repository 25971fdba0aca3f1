"""A task defined outside fairhpc/tasks/ (a hinge loss on reward differences), trained by the real engine.

Run as a script: ``python engine_toy_task.py OUT_DIR``.  It shows that the engine needs nothing from a
task beyond the Task interface: no registry entry, no branch in fairhpc/engine.py.
"""

import sys

import torch

from fairhpc.config import load_config
from fairhpc.engine import Engine
from fairhpc.tasks.base import Task


class HingeTask(Task):
    name = "hinge"
    description = "a reward model trained with a margin hinge loss"
    metric_keys = ("loss", "hinge_active")

    def build_datasets(self):
        from fairhpc.data import build_datasets

        return build_datasets(self.cfg, self.tokenizer)

    def collate(self, rows):
        from fairhpc.data import PreferenceCollator

        return PreferenceCollator(self.tokenizer.pad_token_id)(rows)

    def build_model(self, engine):
        from fairhpc.models import build_tiny_reward_model

        return build_tiny_reward_model(self.cfg.model.tiny, self.tokenizer)

    def _diff(self, engine, model, batch):
        from fairhpc.models import sequence_rewards

        dev = engine.device
        rc = sequence_rewards(model, batch["chosen_input_ids"].to(dev), batch["chosen_attention_mask"].to(dev))
        rr = sequence_rewards(model, batch["rejected_input_ids"].to(dev), batch["rejected_attention_mask"].to(dev))
        return rc - rr

    def loss(self, engine, model, batch):
        d = self._diff(engine, model, batch)
        hinge = torch.relu(1.0 - d)
        return hinge.mean(), {"loss": hinge.mean().detach(), "hinge_active": (hinge > 0).float().mean()}

    def evaluate(self, engine, model, dataset):
        d = engine.gather_by_index(dataset, lambda b: self._diff(engine, model, b))
        return {"accuracy": float((d > 0).float().mean()), "n": int(d.numel())}

    def summary_fields(self):
        return {"loss_name": "hinge"}


if __name__ == "__main__":
    cfg = load_config(None, [f"output_dir={sys.argv[1]}", "train.max_steps=4", "train.save_steps=2",
                             "data.synthetic.n_train=64", "data.synthetic.n_eval=16", "train.lr=2e-3"], task="rm")
    print(Engine(cfg, task_cls=HingeTask).train()["steps"])
