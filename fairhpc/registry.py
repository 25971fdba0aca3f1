"""Single source of truth for every enumerated choice in fairhpc.

The JSON schema, the CLI help, config validation and error messages are all derived from these tuples;
``tests/test_registry.py`` checks that they agree.
"""

from __future__ import annotations

# Training tasks (``fairhpc train-<task>``) and the objective modes each accepts (docs/method.md, "The
# objectives").
#   bt / dpo : utility only (Bradley-Terry for reward models, DPO for policies)
#   fr       : Fairness Regularization, loss = u - alpha * f
#   fc       : Fairness Coefficient,   loss = u * f ** gamma
#   sft      : supervised fine-tuning on target responses (next-token NLL; fairhpc/tasks/sft.py)
#   pg       : policy-gradient RLHF with reward dropout (fairhpc/tasks/pg.py): the plain update of pg.algo;
#              fr / fc there shape each sample's reward by its group's share of the fairness gradient over
#              the groups' expected rewards (fairhpc/pg/fair.py, docs/pg.md)
MODES = {
    "rm": ("bt", "fr", "fc"),       # a scalar (or moe) reward model (fairhpc/tasks/rm.py)
    "dpo": ("dpo", "fr", "fc"),     # a policy trained on preferences (fairhpc/tasks/dpo.py)
    "sft": ("sft",),
    "pair_pm": ("bt", "fr", "fc"),  # a pairwise preference model (fairhpc/rewards/pair_pm.py; its margin is
                                    # log P(A>B) - log P(B>A))
    "pg": ("pg", "fr", "fc"),
    "armo": ("bt", "fr", "fc"),     # ArmoRM's gating stage on stored embeddings (fairhpc/tasks/armo.py,
                                    # docs/armo.md); its margin is the difference of the gated,
                                    # verbosity-decorrelated objective scores
}
TASKS = tuple(MODES)
UTILITY_MODES = ("bt", "dpo", "sft", "pg")
ALL_MODES = ("bt", "dpo", "fr", "fc", "sft", "pg")

REDUCTIONS = ("mean", "sum")  # mean: Fair-RM convention; sum: the authors' Fair-DPO (HALOs) convention
# Where the fairness sums of one loss evaluation come from (docs/method.md, "Scopes"): this rank's micro-batch;
# the micro-step's batches of all data-parallel ranks; all micro-batches of all ranks in the optimizer step.
SCOPES = ("micro", "global", "step")
LOSS_IMPLS = ("auto", "triton", "torch")
# Sequence log-probs of a causal LM (fairhpc/logprobs.py, docs/memory.md): auto = Triton kernel on CUDA, chunked torch
# on CPU (full logits where a model post-processes its logits); chunked / triton force one; eager = full logits
LOGPROB_IMPLS = ("auto", "chunked", "triton", "eager")

DATA_FORMATS = ("auto", "standard", "trl", "hh")
BAD_ROW_POLICIES = ("error", "skip")
TRUNCATION_SIDES = ("left", "right")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ZERO_STAGES = (0, 1, 2, 3)
ATTN_IMPLS = ("auto", "flash_attention_2", "sdpa", "eager")
SCHEDULERS = ("cosine", "linear", "constant")

# Tasks whose held-out evaluation runs inside the training job, with the model it already holds, and the
# `fairhpc` command it runs there (``fairhpc train-<task> --then-eval "<command> ..."``).  The workflow gives
# these tasks no evaluation job of their own.  ArmoRM's final model scores through the backbone again.
EVAL_IN_TRAINING = {"rm": "eval-rm", "pair_pm": "eval-rm", "armo": "eval-rm"}
# Policy tasks that the workflow evaluates in a job of their own with `fairhpc eval-policy` (generations on the
# held-out prompts judged by a reward model against a reference policy).
EVAL_POLICY_TASKS = ("dpo",)


class TrackerNames(tuple):
    """The experiment trackers of ``train.report_to``: one name, or several joined by commas
    (``tensorboard,csv``); ``none`` stands alone.  Membership tests the whole (comma-joined) value."""

    def __contains__(self, value) -> bool:
        if not isinstance(value, str):
            return False
        parts = [p.strip() for p in value.split(",")]
        if len(parts) > 1 and "none" in parts or len(set(parts)) != len(parts):
            return False
        return all(tuple.__contains__(self, p) for p in parts)


# Experiment trackers (transformers / TRL ``report_to`` names); fairhpc/tracking.py implements each.
REPORT_TO = TrackerNames(("none", "tensorboard", "wandb", "mlflow", "csv"))

# Reward-model heads of `train-rm` (``model.head``): one linear scalar head, or E expert scalar heads mixed by a
# softmax gate on the last hidden state (fairhpc/models.py, docs/reward_models.md).
REWARD_HEADS = ("linear", "moe")
# Kinds of saved reward models the evaluation commands dispatch on (fairhpc/rewards/): read from
# the marker file fairhpc_model.json of a model directory, else from its config.json.
MODEL_KINDS = ("scalar", "moe", "pair_pm", "armo")
# How a pairwise model picks the best of N candidates (`fairhpc best-of-n --pairwise`).
PAIRWISE_SELECTIONS = ("round-robin", "knockout")

# Policy-gradient RLHF (fairhpc/pg/, docs/pg.md): update rules, reward-dropout masks and what they rank, where the
# dropout threshold is taken, decodings, where samples come from, the all-dropped fallback, policy start
PG_ALGOS = ("offpolicy", "reinforce", "ppo")
PG_DROPOUTS = ("none", "random", "quantile", "adaptive")
PG_DROPOUT_SIGNALS = ("R", "R+logbeta", "advantage")
PG_DROPOUT_SCOPES = ("global", "rank")
PG_DECODINGS = ("greedy", "stochastic", "top-k")
PG_SAMPLE_FROM = ("auto", "behaviour", "policy")
PG_ALL_DROPPED = ("keep_best", "error")
PG_POLICY_INIT = ("pretrained", "random")
PG_PROMPT_FORMATS = ("chat", "plain")
PG_REWARD_INPUTS = ("auto", "response", "conversation")
# the groups whose expected rewards are the allocation of fair policy gradient: each prompt, or each category
PG_FAIR_GROUPS = ("prompt", "category")

# Online iterative DPO / RAFT (fairhpc/online/, docs/online.md): what each iteration trains, which engine samples
# the responses, which policy is the DPO reference, and how a prompt's scored samples become pairs
ONLINE_ALGOS = ("dpo", "raft")
GENERATE_ENGINES = ("hf", "vllm")
ONLINE_REFERENCES = ("previous", "initial")
PAIR_SELECTIONS = ("best_worst", "best_random", "all_pairs_top")

# ArmoRM (fairhpc/armo/, docs/armo.md): the responses on which the verbosity penalties are chosen, and the dtype
# in which the embed stage stores hidden states
ARMO_REFERENCES = ("pairs_train", "ratings_train")
ARMO_STORE_DTYPES = ("float32", "float16", "bfloat16")
