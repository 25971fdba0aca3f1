"""Single source of truth for every enumerated choice in fairhpc.

The JSON schema, the CLI help, config validation and error messages are all derived from these tuples;
``tests/test_registry.py`` checks that they agree.
"""

from __future__ import annotations

# Training tasks and the objective modes each accepts (docs/method.md, "The objectives").
#   bt / dpo : utility only (Bradley-Terry for reward models, DPO for policies)
#   fr       : Fairness Regularization, loss = u - alpha * f
#   fc       : Fairness Coefficient,   loss = u * f ** gamma
TASKS = ("rm", "dpo")
MODES = {"rm": ("bt", "fr", "fc"), "dpo": ("dpo", "fr", "fc")}
UTILITY_MODES = ("bt", "dpo")
ALL_MODES = ("bt", "dpo", "fr", "fc")

REDUCTIONS = ("mean", "sum")  # mean: Fair-RM convention; sum: the authors' Fair-DPO (HALOs) convention
# Where the fairness sums of one loss evaluation come from (docs/method.md, "Scopes"): this rank's micro-batch;
# the micro-step's batches of all data-parallel ranks; all micro-batches of all ranks in the optimizer step.
SCOPES = ("micro", "global", "step")
LOSS_IMPLS = ("auto", "triton", "torch")

DATA_FORMATS = ("auto", "standard", "trl", "hh")
BAD_ROW_POLICIES = ("error", "skip")
TRUNCATION_SIDES = ("left", "right")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ZERO_STAGES = (0, 1, 2, 3)
ATTN_IMPLS = ("auto", "flash_attention_2", "sdpa", "eager")
SCHEDULERS = ("cosine", "linear", "constant")

# Tasks whose held-out evaluation runs inside the training job, with the model it already holds, and the
# `fairhpc` command it runs there (``fairhpc train-<task> --then-eval "<command> ..."``).  The workflow gives
# these tasks no evaluation job of their own.
EVAL_IN_TRAINING = {"rm": "eval-rm"}
# Policy tasks that the workflow evaluates in a job of their own with `fairhpc eval-policy` (generations on the
# held-out prompts judged by a reward model against a reference policy).
EVAL_POLICY_TASKS = ("dpo",)
