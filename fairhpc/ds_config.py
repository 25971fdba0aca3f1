"""The DeepSpeed config of a run: fairhpc/ds_configs/zero<stage>.json with its 'auto' fields filled in.

Imported by the engine (fairhpc/engine.py), which trains with it, and by ``fairhpc build-ops``
(fairhpc/ops.py), which reads it to know which compiled ops a run will need.
"""

from __future__ import annotations

import json
from pathlib import Path

from fairhpc.config import RunConfig

DS_CONFIG_DIR = Path(__file__).parent / "ds_configs"


def build_ds_config(cfg: RunConfig, precision: str, zero_stage: int | None = None) -> dict:
    """Fill the 'auto' fields of fairhpc/ds_configs/zero<stage>.json from the run config."""
    stage = cfg.train.zero_stage if zero_stage is None else zero_stage
    ds = json.loads((DS_CONFIG_DIR / f"zero{stage}.json").read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.train.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds["gradient_clipping"] = cfg.train.max_grad_norm
    ds["bf16"] = {"enabled": precision == "bf16"}
    if precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds
