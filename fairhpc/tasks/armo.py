"""ArmoRM's gating stage (``fairhpc train-armo``): an MLP on the prompt's backbone state weights K
verbosity-decorrelated objective scores (fairhpc/rewards/armo.py); the margin score(chosen) - score(rejected)
feeds the Bradley-Terry utility and the fairness objective (bt, fr, fc; docs/method.md).

It trains on stored states only (``armo.embeddings`` from ``fairhpc armo-embed``, ``armo.regression`` from
``fairhpc armo-regress``), so a step costs a few small matrix products.  The verbosity penalties are chosen once,
before training, on the reference responses (``armo.reference``).  The final directory holds the gate, the
regression and (tiny) the backbone plus fairhpc_model.json of kind armo: ``fairhpc eval-rm``, RewardBench and
best-of-n load it with :func:`fairhpc.rewards.armo.load_armo` and run the backbone again (docs/armo.md).
"""

from __future__ import annotations

import torch

from fairhpc.errors import ConfigError
from fairhpc.tasks.preference import PreferenceTask


class EmbeddedPairs(torch.utils.data.Dataset):
    """Preference pairs as stored states: prompt [n, H], chosen [n, H], rejected [n, H], category [n]."""

    def __init__(self, tensors: dict, split: str, categories: list[str]):
        self.prompt = tensors[f"{split}.prompt"]
        self.chosen = tensors[f"{split}.chosen"]
        self.rejected = tensors[f"{split}.rejected"]
        self.category = tensors[f"{split}.category"]
        self.length_chosen = tensors[f"{split}.length_chosen"]
        self.length_rejected = tensors[f"{split}.length_rejected"]
        self.categories = list(categories)

    def __len__(self) -> int:
        return self.prompt.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "prompt": self.prompt[i], "chosen": self.chosen[i], "rejected": self.rejected[i],
                "category_id": int(self.category[i])}


class ArmoTask(PreferenceTask):
    name = "armo"
    description = "ArmoRM's gate over regressed, verbosity-decorrelated objectives (on stored embeddings)"
    loss_kind = "rm"
    progress_keys = ("loss", "accuracy", "f")

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        self.info = self.reg = self.decor = None

    # ---- data: the stored states, the regression and the verbosity penalties
    def build_datasets(self):
        import numpy as np

        from fairhpc.armo.embed import backbone_ident, load_embeddings
        from fairhpc.armo.regress import load_regression
        from fairhpc.rewards.armo import verbosity_penalties

        a = self.cfg.armo
        tensors, info = load_embeddings(a.embeddings)
        reg, meta = load_regression(a.regression)
        if info["backbone"] != backbone_ident(self.cfg):
            raise ConfigError(f"armo.embeddings: {a.embeddings} holds states of backbone {info['backbone']}, but "
                              f"model.name_or_path / model.tiny / armo.backbone_seed give {backbone_ident(self.cfg)}")
        if meta["backbone"] != info["backbone"] or reg["weight"].shape[1] != info["hidden_size"]:
            raise ConfigError(f"armo.regression: {a.regression} was fitted on states of another backbone "
                              f"({meta['backbone']}) than armo.embeddings ({info['backbone']})")
        if "pairs_train.prompt" not in tensors:
            raise ConfigError(f"armo.embeddings: {a.embeddings} holds no preference pairs (data.train was not "
                              "embedded)")
        names = list(meta["objectives"])
        v = names.index(a.verbosity) if a.verbosity else -1
        if a.verbosity and v < 0:
            raise ConfigError(f"armo.verbosity: {a.verbosity!r} is not an objective of {a.regression} "
                              f"({', '.join(names)})")
        w, b = reg["weight"].double(), reg["bias"].double()
        if a.reference == "pairs_train":
            ref = torch.cat([tensors["pairs_train.chosen"], tensors["pairs_train.rejected"]])
        else:
            ref = tensors["ratings_train.response"]
        r = (ref.double() @ w.T + b).numpy()
        if v >= 0:
            self.decor = verbosity_penalties(r, v, a.corr_threshold, a.penalties)
        else:
            self.decor = {"penalties": [0.0] * len(names), "corr_before": None, "corr_after": None,
                          "decorrelated": None}
        self.info, self.reg, self.names, self.verbosity = info, reg, names, v
        cats = info["categories"]
        train = EmbeddedPairs(tensors, "pairs_train", cats)
        ev = EmbeddedPairs(tensors, "pairs_eval", cats) if "pairs_eval.prompt" in tensors else None
        stats = {"train": {"pairs": len(train)}, "eval": {"pairs": len(ev)} if ev is not None else None,
                 "objectives": names, "verbosity": a.verbosity or None, "reference": a.reference,
                 "reference_responses": int(ref.shape[0]), "decorrelation": self.decor,
                 "embeddings_fingerprint": info["fingerprint"],
                 "reference_std": dict(zip(names, np.asarray(r).std(0).tolist()))}
        not_ok = [n for n, ok in zip(names, self.decor["decorrelated"] or []) if not ok and names.index(n) != v]
        if not_ok:
            print(f"[fairhpc] armo: no candidate of armo.penalties brings {', '.join(not_ok)} to a Spearman "
                  f"correlation <= {a.corr_threshold} with {a.verbosity}; they keep lambda = 1", flush=True)
        return train, ev, stats

    def collate(self, rows: list[dict]) -> dict:
        return {"index": torch.tensor([r["index"] for r in rows]),
                "prompt": torch.stack([r["prompt"] for r in rows]),
                "chosen": torch.stack([r["chosen"] for r in rows]),
                "rejected": torch.stack([r["rejected"] for r in rows]),
                "category_id": torch.tensor([r["category_id"] for r in rows])}

    # ---- model
    def build_model(self, engine):
        from fairhpc.rewards.armo import ArmoGate

        a = self.cfg.armo
        gate = ArmoGate(self.info["hidden_size"], self.names, a.gate_hidden, a.gate_layers, a.gate_dropout,
                        a.temperature, a.logit_scale, self.verbosity)
        gate.set_regression(self.reg["weight"], self.reg["bias"], self.decor["penalties"])
        return gate

    def margin_inputs(self, engine, model, batch, split):
        dt = next(engine.engine.module.parameters()).dtype
        dev = engine.device
        b = batch["prompt"].shape[0]
        p = batch["prompt"].to(dev, dt)
        out = model(torch.cat([p, p]), torch.cat([batch["chosen"], batch["rejected"]]).to(dev, dt))
        s = out["score"].float()
        return s[:b], s[b:]

    def margins(self, inputs) -> torch.Tensor:
        chosen, rejected = inputs
        return chosen - rejected

    @torch.no_grad()
    def evaluate(self, engine, model, dataset) -> dict:
        """The objective's metrics and accuracy per category (as every reward model), plus each objective's
        own accuracy, the accuracy of equal weights, the mean gate per category and the learned scale."""
        out = super().evaluate(engine, model, dataset)
        module = engine.engine.module
        dt = next(module.parameters()).dtype
        dev = engine.device
        p = dataset.prompt.to(dev, dt)
        oc = module(p, dataset.chosen.to(dev, dt))
        orj = module(p, dataset.rejected.to(dev, dt))
        dc, dr = oc["decorrelated"].float(), orj["decorrelated"].float()
        out["objective_accuracy"] = {n: float((dc[:, k] > dr[:, k]).float().mean())
                                     for k, n in enumerate(self.names) if k != self.verbosity}
        out["objective_accuracy_raw"] = {n: float((oc["objectives"][:, k] > orj["objectives"][:, k]).float().mean())
                                         for k, n in enumerate(self.names)}
        out["uniform_gate_accuracy"] = float((dc.sum(1) > dr.sum(1)).float().mean())
        g = oc["gate"].float().cpu()
        cats = dataset.category
        out["gate_mean"] = dict(zip(self.names, g.mean(0).tolist()))
        out["gate_mean_by_category"] = {c: dict(zip(self.names, g[cats == j].mean(0).tolist()))
                                        for j, c in enumerate(dataset.categories) if (cats == j).any()}
        out["logit_scale"] = float(module.logit_scale.detach().float()[0])
        return out

    # ---- the final directory: one reward model
    def finish(self, engine) -> None:
        import shutil
        from pathlib import Path

        import torch.distributed as dist

        if engine.is_main:
            from fairhpc.armo.embed import BACKBONE_DIR
            from fairhpc.armo.regress import REGRESSION
            from fairhpc.rewards.base import write_marker

            final = Path(engine.run.final)
            a = self.cfg.armo
            shutil.copyfile(a.regression, final / REGRESSION)
            ref = self.info["backbone_ref"]
            if self.cfg.model.name_or_path == "tiny":
                src = Path(self.info["dir"]) / ref
                tmp = final / f".{BACKBONE_DIR}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src, tmp)
                tmp.replace(final / BACKBONE_DIR)
                ref = BACKBONE_DIR
            write_marker(final, {
                "kind": "armo", "backbone": ref, "backbone_ident": self.info["backbone"],
                "gate": "armo_gate.safetensors", "regression": REGRESSION, "objectives": self.names,
                "verbosity": a.verbosity or None, "penalties": self.decor["penalties"],
                "corr_threshold": a.corr_threshold, "max_length": self.info["max_length"],
                "embeddings_fingerprint": self.info["fingerprint"], "categories": self.info["categories"]})
        dist.barrier()
        super().finish(engine)

    def run_then_eval(self, engine, args) -> None:
        """`fairhpc eval-rm` of RUN/final on rank 0 (ArmoRM scores through the backbone, loaded from disk)."""
        import torch.distributed as dist

        from fairhpc.evaluation.cli import run_eval_rm

        if engine.is_main:
            run_eval_rm(args)
        dist.barrier()

    def summary_fields(self) -> dict:
        return {**super().summary_fields(), "objectives": self.names, "penalties": self.decor["penalties"]}


TASK = ArmoTask
