"""Run configuration: one dataclass per section, loaded from YAML plus ``key=value`` overrides.

Every field carries help text (``metadata["help"]``) and every numeric field its allowed values
(``metadata["range"]``, a :class:`Range`, or ``metadata["choices"]``).  ``validate`` walks all fields with one
rule per type (numbers finite and in range, integers not booleans, strings in their choices) and then runs the
cross-field checks; ``check_environment`` checks what depends on the machine (device, output directory, model
paths).  Bad input fails here, before a model is built or data is read, with a message naming the file (and
line), the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from fairhpc import registry, yamlio
from fairhpc.errors import ConfigError, DataError  # re-exported: ``from fairhpc.config import ConfigError``
from fairhpc.sources import DATA_SUFFIXES


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric key: finite numbers in an interval (``None`` = unbounded; ends closed
    unless ``lo_open``/``hi_open``), plus ``special`` values outside it (e.g. -1 = "derive it")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    special: tuple = ()

    def __contains__(self, v) -> bool:
        if v in self.special:
            return True
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self) -> str:
        """``'> 0'``, ``'in [0, 1)'``, ``'-1 or >= 1'``; ``''`` when any finite number is allowed."""
        if self.lo is not None and self.hi is not None:
            s = f"in {'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            s = f"{'>' if self.lo_open else '>='} {self.lo}"
        elif self.hi is not None:
            s = f"{'<' if self.hi_open else '<='} {self.hi}"
        else:
            s = ""
        return " or ".join([*map(str, self.special), *([s] if s else [])])


FINITE = Range()                                # any finite number
POSITIVE = Range(0, lo_open=True)               # > 0
NON_NEGATIVE = Range(0)                         # >= 0 (counts, "0 = off")
AT_LEAST_ONE = Range(1)                         # sizes and step intervals
UNIT_HALF_OPEN = Range(0, 1, hi_open=True)      # [0, 1): fractions, AdamW betas
SEED = Range(0, 2**32 - 1)                      # numpy's legacy seed range (torch takes more)


def _error(key: str, msg: str) -> ConfigError:
    """A ConfigError ``'key: msg'`` that remembers its key, so the loader can add the file and line."""
    err = ConfigError(f"{key}: {msg}")
    err.key = key
    return err


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class FairnessConfig:
    """The objective of one training step; shared by the torch reference and the Triton kernel."""

    mode: str = _f("bt", "objective: bt/dpo (utility only), fr (u - alpha*f) or fc (u * f**gamma)",
                   choices=registry.ALL_MODES)
    alpha: float = _f(0.1, "fr: weight of the fairness reward f; fr needs >= 0", range=FINITE)
    tau: float = _f(-1.0, "Lan et al. fairness parameter; -1 = Jain's index, 0 = entropy limit; 1 is invalid",
                    range=FINITE)
    gamma: float = _f(0.5, "fc: exponent of f; fc needs > 0", range=FINITE)
    beta: float = _f(0.1, "DPO temperature (ignored for reward models)", range=POSITIVE)
    reduction: str = _f("mean", "mean over pairs (Fair-RM) or sum (the authors' Fair-DPO)",
                        choices=registry.REDUCTIONS)
    scope: str = _f("micro", "pairs that share one fairness term: micro = each rank's micro-batch; global = "
                              "one micro-step of all ranks; step = the whole optimizer step (all micro-batches "
                              "of all ranks, one extra forward without a graph)",
                    choices=registry.SCOPES)
    loss_impl: str = _f("auto", "auto: fused Triton kernel on CUDA, torch reference on CPU",
                        choices=registry.LOSS_IMPLS)

    def __post_init__(self):
        validate_fairness(self)


def validate_fairness(cfg: FairnessConfig, task: str | None = None, where: str = "objective") -> None:
    def bad(key, msg):
        raise _error(f"{where}.{key}", msg)

    if cfg.mode not in registry.ALL_MODES:
        bad("mode", f"unknown mode {cfg.mode!r}; allowed: {', '.join(registry.ALL_MODES)}")
    if task is not None and cfg.mode not in registry.MODES[task]:
        bad("mode", f"mode {cfg.mode!r} is not a {task} mode; allowed for {task}: "
                    f"{', '.join(registry.MODES[task])}")
    for key in ("alpha", "tau", "gamma", "beta"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            bad(key, f"must be a finite number, got {v!r}")
    if cfg.mode in ("fr", "fc") and cfg.tau == 1:
        bad("tau", "tau = 1 makes f identically 0 (sign(1 - tau) = 0), which switches fairness off; "
                   "choose tau != 1 (the paper uses -1, ablation {-5, -1, 0.5, 2, 10})")
    if cfg.mode == "fc" and cfg.tau > 1:
        bad("tau", f"mode fc needs tau < 1: for tau = {cfg.tau} > 1, f is negative and f**gamma is NaN; "
                   "use mode fr for tau > 1")
    if cfg.mode == "fr" and cfg.alpha < 0:
        bad("alpha", f"must be >= 0, got {cfg.alpha}")
    if cfg.mode == "fc" and cfg.gamma <= 0:
        bad("gamma", f"must be > 0, got {cfg.gamma}")
    if cfg.beta <= 0:
        bad("beta", f"must be > 0, got {cfg.beta}")
    for key, allowed in (("reduction", registry.REDUCTIONS), ("scope", registry.SCOPES),
                         ("loss_impl", registry.LOSS_IMPLS)):
        if getattr(cfg, key) not in allowed:
            bad(key, f"unknown value {getattr(cfg, key)!r}; allowed: {', '.join(allowed)}")


@dataclass
class SyntheticConfig:
    n_train: int = _f(2000, "synthetic training pairs", range=AT_LEAST_ONE)
    n_eval: int = _f(500, "synthetic held-out pairs", range=NON_NEGATIVE)
    seed: int = _f(1234, "generator seed (independent of the training seed)", range=SEED)
    length_bias: float = _f(1.0, "strength of the planted length bias (0 = none, < 0 = reversed)", range=FINITE)


@dataclass
class DataConfig:
    train: str = _f("synthetic", "'synthetic', a local .jsonl/.json/.parquet (optionally .gz) file, or a hub dataset name")
    eval: str | None = _f("synthetic", "held-out data, same forms as train; null = none")
    train_split: str = _f("train", "split of a hub dataset used for training")
    eval_split: str = _f("test", "split of a hub dataset used for evaluation")
    format: str = _f("auto", "row format", choices=registry.DATA_FORMATS)
    bad_rows: str = _f("error", "error: stop at the first bad row; skip: drop it and count the reason",
                       choices=registry.BAD_ROW_POLICIES)
    max_length: int = _f(256, "max tokens of prompt + response", range=Range(2))
    max_prompt_length: int = _f(128, "max prompt tokens (DPO); < data.max_length", range=AT_LEAST_ONE)
    truncation_side: str = _f("left", "side cut when too long (the paper truncates on the left)",
                              choices=registry.TRUNCATION_SIDES)
    max_train_examples: int | None = _f(None, "use at most this many training pairs; null = all",
                                        range=AT_LEAST_ONE)
    max_eval_examples: int | None = _f(None, "use at most this many held-out pairs; null = all",
                                       range=AT_LEAST_ONE)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig, metadata={"help": "synthetic generator"})


@dataclass
class TinyModelConfig:
    hidden_size: int = _f(64, "hidden size of the tiny Llama; a multiple of num_attention_heads with an even "
                              "head size (RoPE)", range=AT_LEAST_ONE)
    num_hidden_layers: int = _f(2, "layers", range=AT_LEAST_ONE)
    num_attention_heads: int = _f(4, "attention heads", range=AT_LEAST_ONE)
    num_key_value_heads: int = _f(2, "key/value heads (GQA); divides num_attention_heads", range=AT_LEAST_ONE)
    intermediate_size: int = _f(128, "MLP size", range=AT_LEAST_ONE)
    max_position_embeddings: int = _f(512, "max positions", range=AT_LEAST_ONE)
    attention_dropout: float = _f(0.0, "dropout on the attention probabilities while training",
                                  range=UNIT_HALF_OPEN)


@dataclass
class ModelConfig:
    name_or_path: str = _f("tiny", "'tiny' (built from model.tiny, offline) or a transformers path / hub name")
    ref_name_or_path: str | None = _f(None, "DPO reference model; null = same as name_or_path")
    tokenizer: str | None = _f(None, "tokenizer path / hub name; null = the model's (or the built-in one for tiny)")
    attn_implementation: str = _f("auto", "auto: flash_attention_2 if installed and on GPU, else sdpa",
                                  choices=registry.ATTN_IMPLS)
    gradient_checkpointing: bool = _f(False, "recompute activations in backward")
    head: str = _f("linear", "reward-model head (train-rm): linear = one scalar head; moe = model.moe_experts "
                             "scalar heads mixed by a softmax gate on the last hidden state",
                   choices=registry.REWARD_HEADS)
    moe_experts: int = _f(4, "experts of model.head=moe", range=Range(2))
    logprob_impl: str = _f("auto", "sequence log-probs of a policy: auto = Triton kernel on CUDA, chunked torch "
                                   "on CPU (no [B, T, V] logits); chunked; triton; eager = full logits "
                                   "(docs/memory.md)", choices=registry.LOGPROB_IMPLS)
    logprob_chunk_tokens: int = _f(-1, "tokens per chunk of logits (logprob_impl chunked/triton); -1 = as many "
                                       "as fit 64 MiB of float32 logits", range=Range(1, special=(-1,)))
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig, metadata={"help": "tiny model shape"})


@dataclass
class TrainConfig:
    epochs: float = _f(1.0, "passes over the training data; 0 only with train.max_steps set",
                       range=NON_NEGATIVE)
    max_steps: int = _f(-1, "optimizer steps; -1 = as many as train.epochs gives; 0 is refused, use -1",
                        range=Range(1, special=(-1,)))
    micro_batch_size: int = _f(8, "pairs per rank per micro-step", range=AT_LEAST_ONE)
    grad_accum: int = _f(1, "micro-steps per optimizer step", range=AT_LEAST_ONE)
    lr: float = _f(1e-4, "peak learning rate (AdamW)", range=POSITIVE)
    weight_decay: float = _f(0.0, "AdamW weight decay", range=NON_NEGATIVE)
    adam_beta1: float = _f(0.9, "AdamW beta1", range=UNIT_HALF_OPEN)
    adam_beta2: float = _f(0.95, "AdamW beta2", range=UNIT_HALF_OPEN)
    warmup_ratio: float = _f(0.03, "warmup as a fraction of optimizer steps (used when warmup_steps = -1)",
                             range=UNIT_HALF_OPEN)
    warmup_steps: int = _f(-1, "warmup optimizer steps; -1 = warmup_ratio * total steps",
                           range=Range(0, special=(-1,)))
    scheduler: str = _f("cosine", "learning-rate schedule after warmup", choices=registry.SCHEDULERS)
    max_grad_norm: float = _f(1.0, "gradient clipping; 0 = off", range=NON_NEGATIVE)
    zero_stage: int = _f(0, "DeepSpeed ZeRO stage", choices=registry.ZERO_STAGES)
    precision: str = _f("auto", "auto: bf16 on GPU, fp32 on CPU; bf16 and fp16 need a CUDA GPU",
                        choices=registry.PRECISIONS)
    save_steps: int = _f(50, "DeepSpeed checkpoint every N optimizer steps; 0 = only at the end",
                         range=NON_NEGATIVE)
    keep_checkpoints: int = _f(2, "checkpoints kept on disk", range=AT_LEAST_ONE)
    eval_steps: int = _f(0, "held-out evaluation every N optimizer steps; 0 = only at the end",
                         range=NON_NEGATIVE)
    log_steps: int = _f(1, "metrics line every N optimizer steps", range=AT_LEAST_ONE)
    precompute_ref: bool = _f(True, "DPO: compute reference log-probs once and cache them")
    num_workers: int = _f(0, "DataLoader worker processes; 0 = load in the training process", range=NON_NEGATIVE)
    report_to: str = _f("none", "experiment tracking of training metrics, evaluation summaries and the resolved "
                                "config, written by rank 0 (fairhpc/tracking.py): a tracker, or several joined "
                                "by commas (tensorboard,csv); none = off", choices=registry.REPORT_TO)
    tracking_dir: str | None = _f(None, "where local trackers write (tensorboard/, csv/, mlruns/ below it); "
                                        "null = <output_dir>/tracking")
    run_name: str | None = _f(None, "the run's name in the trackers; null = the last component of output_dir")
    tracking_project: str = _f("fairhpc", "wandb project / mlflow experiment the run is logged under")


@dataclass
class PgConfig:
    """Policy-gradient RLHF with reward dropout (``fairhpc train-pg``, fairhpc/tasks/pg.py, docs/pg.md)."""

    algo: str = _f("offpolicy", "update: offpolicy (Reward Dropout's importance-weighted update on samples "
                                "from the behaviour model), reinforce (baseline + KL penalty) or ppo",
                   choices=registry.PG_ALGOS)
    sample_from: str = _f("auto", "who generates the training samples: behaviour (the reference model beta), "
                                  "policy (on-policy); auto = behaviour for offpolicy, policy otherwise",
                          choices=registry.PG_SAMPLE_FROM)
    dropout: str = _f("none", "reward dropout: none, random (drops exactly round(rate x batch) samples), "
                              "quantile (keeps the samples at or above the rate-quantile), adaptive (keeps "
                              "those at or above the running mean of earlier batches)",
                      choices=registry.PG_DROPOUTS)
    dropout_rate: float = _f(0.9, "share of samples dropout removes (random, quantile)", range=UNIT_HALF_OPEN)
    dropout_signal: str = _f("R", "what dropout ranks: R (the reward), R+logbeta (the bi-objective reward) or "
                                  "advantage (the update's own weight)", choices=registry.PG_DROPOUT_SIGNALS)
    dropout_scope: str = _f("global", "where the threshold is taken: global = the whole data-parallel batch "
                                      "of the step (one all_gather), rank = each rank's own samples",
                            choices=registry.PG_DROPOUT_SCOPES)
    all_dropped: str = _f("keep_best", "a step whose mask keeps no sample: keep_best keeps the best sample(s), "
                                       "error stops the run", choices=registry.PG_ALL_DROPPED)
    decoding: str = _f("stochastic", "decoding of the samples (training and evaluation)",
                       choices=registry.PG_DECODINGS)
    temperature: float = _f(1.0, "sampling temperature (stochastic, top-k)", range=POSITIVE)
    top_k: int = _f(50, "top-k decoding: sample among the k most likely tokens", range=AT_LEAST_ONE)
    max_new_tokens: int = _f(16, "tokens generated per sample at most", range=AT_LEAST_ONE)
    samples_per_prompt: int = _f(1, "samples generated per prompt", range=AT_LEAST_ONE)
    fair_groups: str = _f("prompt", "objective.mode fr/fc: the groups whose expected rewards fairness compares "
                                    "(each prompt's samples, or each data category; docs/pg.md)",
                          choices=registry.PG_FAIR_GROUPS)
    category_reward_scale: str = _f("", "a planted handicap for studying fairness: 'honest=0.3,helpful=0.6' "
                                        "multiplies the reward of those categories' prompts (training and "
                                        "evaluation); '' = none")
    category_field: str = _f("category", "data column holding a prompt's category (a string, or an integer "
                                         "label such as AG News' topic) for pg.fair_groups: category")
    clip: float = _f(1.0, "offpolicy: the importance weight pi/beta is clipped to [0, clip]; 0 = no clipping",
                     range=NON_NEGATIVE)
    reward_scale: float = _f(1.0, "the reward R enters every update as reward_scale * R", range=FINITE)
    kl_coef: float = _f(0.05, "reinforce, ppo: weight of the KL penalty to the reference", range=NON_NEGATIVE)
    ppo_epochs: int = _f(2, "ppo: optimizer steps on one rollout (the rollout is made every ppo_epochs steps)",
                         range=AT_LEAST_ONE)
    ppo_clip: float = _f(0.2, "ppo: clip range of the probability ratio", range=POSITIVE)
    value_clip: float = _f(0.2, "ppo: clip range of the value update", range=POSITIVE)
    vf_coef: float = _f(0.5, "ppo: weight of the value loss", range=NON_NEGATIVE)
    gamma: float = _f(1.0, "ppo: discount of GAE", range=Range(0, 1))
    gae_lambda: float = _f(0.95, "ppo: lambda of GAE", range=Range(0, 1))
    whiten_advantages: bool = _f(True, "ppo: normalise the advantages of a rollout to mean 0, std 1")
    reward_model: str | None = _f(None, "reward: a reward model directory of this project (one output) or a "
                                        "transformers sequence classifier (path or hub name); `fairhpc "
                                        "pg-classifier` trains the synthetic task's classifier")
    target_label: str | None = _f(None, "classifier rewards: the label whose probability is the reward (a name "
                                        "of the classifier's id2label, or its index)")
    reward_input: str = _f("auto", "what the reward model reads: response text, or the conversation (prompt "
                                   "+ response in its chat template); auto = conversation for one-output "
                                   "reward models, response for classifiers", choices=registry.PG_REWARD_INPUTS)
    policy_init: str = _f("pretrained", "the policy starts as the pretrained model.name_or_path, or with "
                                        "random weights of its architecture (a non-pretrained target)",
                          choices=registry.PG_POLICY_INIT)
    prompt_format: str = _f("chat", "prompts rendered with the chat template (chat) or as plain text to continue",
                            choices=registry.PG_PROMPT_FORMATS)
    prompt_field: str = _f("prompt", "data column holding the prompt (text or messages)")
    prompt_words: int = _f(0, "keep the first N words of each prompt (continuation tasks); 0 = all",
                           range=NON_NEGATIVE)


ARMO_PENALTIES = [0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55,
                  0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


@dataclass
class ArmoConfig:
    """ArmoRM (fairhpc/armo/, docs/armo.md): embed -> regress -> gate (task armo)."""

    embeddings: str = _f("", "armo: gathered embeddings file of `fairhpc armo-embed` (DIR/embeddings.safetensors), "
                             "read by armo-regress and the gate (train-armo)")
    regression: str = _f("", "armo: regression file of `fairhpc armo-regress` (DIR/regression.safetensors), read "
                             "by the gate (train-armo)")
    ratings_train: str = _f("synthetic", "armo: absolute ratings for the regression: 'synthetic' or a "
                                         ".jsonl/.json/.parquet file or hub dataset of prompt, response, ratings")
    ratings_eval: str | None = _f("synthetic", "armo: held-out ratings (R^2 per objective); null = none")
    objectives: list = _f(  # noqa: RUF009 - _f gives a default_factory
        [], "armo: rating columns in order; [] = the keys of the `ratings` mappings of ratings_train; named "
            "columns may also be top-level fields (HelpSteer form)")
    rating_min: float = _f(0.0, "armo: lowest allowed rating", range=FINITE)
    rating_max: float = _f(4.0, "armo: highest allowed rating; > rating_min", range=FINITE)
    synthetic_ratings_train: int = _f(2000, "armo: synthetic rated responses for the regression",
                                      range=AT_LEAST_ONE)
    synthetic_ratings_eval: int = _f(500, "armo: synthetic held-out rated responses", range=NON_NEGATIVE)
    max_length: int = _f(512, "armo: max tokens of prompt + response given to the backbone (oldest prompt "
                              "tokens cut first)", range=Range(2))
    batch_size: int = _f(16, "armo: sequences per backbone forward of the embed stage", range=AT_LEAST_ONE)
    num_shards: int = _f(4, "armo: shards of the embed stage (one job each in the workflow)", range=AT_LEAST_ONE)
    store_dtype: str = _f("float32", "armo: dtype of the stored embeddings", choices=registry.ARMO_STORE_DTYPES)
    backbone_seed: int = _f(0, "armo: seed of the random weights of a tiny backbone (model.name_or_path: tiny)",
                            range=SEED)
    ridge_alphas: list = _f(  # noqa: RUF009 - _f gives a default_factory
        [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4],
        "armo: ridge regularisation strengths tried per objective (each > 0)")
    val_fraction: float = _f(0.2, "armo: share of ratings_train rows that choose each objective's ridge alpha",
                             range=Range(0, 1, lo_open=True, hi_open=True))
    fit_intercept: bool = _f(False, "armo: ridge intercept per objective (ArmoRM fits none)")
    verbosity: str = _f("verbosity", "armo: the objective the others are decorrelated from; '' = none")
    corr_threshold: float = _f(0.03, "armo: each objective minus lambda_k * verbosity must have Spearman "
                                     "correlation <= this with verbosity on the reference set",
                               range=Range(-1, 1))
    penalties: list = _f(ARMO_PENALTIES,  # noqa: RUF009 - _f gives a default_factory
                         "armo: candidate lambda_k, tried in increasing order (each >= 0)")
    reference: str = _f("pairs_train", "armo: responses on which the penalties are chosen",
                        choices=registry.ARMO_REFERENCES)
    gate_hidden: int = _f(64, "armo: width of the gate's hidden layers", range=AT_LEAST_ONE)
    gate_layers: int = _f(2, "armo: hidden layers of the gate MLP (0 = linear)", range=NON_NEGATIVE)
    gate_dropout: float = _f(0.0, "armo: dropout after each hidden layer of the gate", range=UNIT_HALF_OPEN)
    temperature: float = _f(10.0, "armo: softmax temperature of the gate", range=POSITIVE)
    logit_scale: float = _f(1.0, "armo: initial value of the learned scale of the gated score", range=POSITIVE)

    def __post_init__(self):
        if not isinstance(self.objectives, list) or not all(isinstance(o, str) and o for o in self.objectives):
            raise _error("armo.objectives", f"expected a list of rating column names, got {self.objectives!r}")
        if len(set(self.objectives)) != len(self.objectives):
            raise _error("armo.objectives", f"names repeat: {self.objectives}")
        for key in ("ridge_alphas", "penalties"):
            v = getattr(self, key)
            ok = isinstance(v, list) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
            if not ok or any(x <= 0 if key == "ridge_alphas" else x < 0 for x in v):
                need = "> 0" if key == "ridge_alphas" else ">= 0"
                raise _error(f"armo.{key}", f"expected a non-empty list of finite numbers {need}, got {v!r}")
        lo, hi = self.rating_min, self.rating_max
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi))
        if numbers and hi <= lo:
            raise _error("armo.rating_max", f"must be > armo.rating_min ({self.rating_min}), got {self.rating_max}")


@dataclass
class RunConfig:
    task: str = _f("rm", "what to train", choices=registry.TASKS)
    seed: int = _f(0, "seed for model init, data order and dropout", range=SEED)
    output_dir: str = _f("runs/default", "where metrics, checkpoints and the final model go; a writable "
                                         "directory (created if missing)")
    objective: FairnessConfig = field(default_factory=FairnessConfig, metadata={"help": "loss"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "optimisation"})
    pg: PgConfig = field(default_factory=PgConfig, metadata={"help": "policy-gradient RLHF"})
    armo: ArmoConfig = field(default_factory=ArmoConfig, metadata={"help": "ArmoRM"})


# ----------------------------------------------------------------------------------------------- loading

def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _base_type(tp) -> tuple[Any, bool]:
    """``(X, optional)`` for an annotation ``X`` or ``X | None``."""
    args = getattr(tp, "__args__", None)
    if args is not None and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _coerce(value: Any, tp, key: str):
    """Convert ``value`` (from YAML or an override) to the annotated type ``tp`` or raise naming key and value.

    Booleans are never numbers (``true`` for an int or float key is refused) and numbers are never booleans;
    a float is an int only when it is integral (``2.0`` -> 2, ``2.5`` / ``.inf`` / ``.nan`` refused)."""
    tp, optional = _base_type(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))):
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise _error(key, f"expected true or false, got {value!r}")
    if tp in (int, float):
        what = "an integer" if tp is int else "a number"
        exact = isinstance(value, int) or (isinstance(value, float) and (tp is float or value.is_integer()))
        if exact and not isinstance(value, bool):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise _error(key, f"expected {what}, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise _error(key, f"expected a string, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise _error(prefix.rstrip(".") or "top level", f"expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        err = ConfigError(f"unknown key {prefix}{unknown[0]}; allowed keys in "
                          f"{prefix.rstrip('.') or 'top level'}: {', '.join(fields)}")
        err.key = f"{prefix}{unknown[0]}"
        raise err
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        tp = hints[name]
        key = prefix + name
        if _is_section(tp):
            kwargs[name] = _build(tp, data[name] or {}, key + ".")
            continue
        value = _coerce(data[name], tp, key)
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise _error(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, choices))}")
        kwargs[name] = value
    return cls(**kwargs)


def parse_overrides(overrides: list[str]) -> dict:
    """``["objective.mode=fr", "train.lr=1e-5"]`` -> nested dict (values parsed as YAML scalars)."""
    out: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. objective.mode=fr")
        key, raw = item.split("=", 1)
        try:
            value = yamlio.loads(raw, f"override {item!r}") if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _dotted_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in data.items():
        keys.add(f"{prefix}{k}")
        if isinstance(v, dict):
            keys |= _dotted_keys(v, f"{prefix}{k}.")
    return keys


def _yaml_key_lines(text: str, source: str = "<yaml>") -> dict[str, int]:
    """``{"train.lr": 12, ...}``: the 1-based line of every key of a YAML mapping (from the composer's marks).
    A repeated key, at any depth, raises :class:`fairhpc.yamlio.DuplicateKeyError`."""
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    lines.setdefault(prefix + str(k.value), k.start_mark.line + 1)
                    walk(v, f"{prefix}{k.value}.")

    try:
        walk(yamlio.compose(text, source), "")
    except yaml.YAMLError:
        pass
    return lines


class _Source:
    """Where a config's values came from (YAML file and line, overrides, defaults), for error messages."""

    def __init__(self, path: str | None = None, lines: dict[str, int] | None = None,
                 overridden: set[str] | None = None):
        self.path, self.lines, self.overridden = path, lines or {}, overridden or set()

    def __str__(self) -> str:
        if self.path is None:
            return "overrides" if self.overridden else "<defaults>"
        return f"{self.path} + overrides" if self.overridden else self.path

    def at(self, key: str | None) -> str:
        """'overrides' when ``key`` was overridden, 'FILE: line N' when the file sets it, else the whole source."""
        if key in self.overridden:
            return "overrides"
        if key in self.lines:
            return f"{self.path}: line {self.lines[key]}"
        return str(self)

    def located(self, err: ConfigError) -> ConfigError:
        """``err`` with its origin in front (the same class, so a ModelPathError stays one)."""
        key = getattr(err, "key", None)
        out = type(err)(f"{self.at(key)}: {err}")
        out.key = key
        return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None,
                task: str | None = None) -> RunConfig:
    """Load a run config from YAML (optional), apply overrides, validate everything (not the environment:
    see :func:`check_environment`).

    ``task`` forces the task (``fairhpc train-rm`` / ``train-dpo``); a config naming the other task is an
    error.  When the task is dpo and no mode was given, the mode defaults to ``dpo``.  Errors name the
    origin of the bad value: ``FILE: line N`` for a key set in the YAML file, ``overrides`` for a key=value.
    """
    data: dict = {}
    source = _Source()
    if path is not None:
        try:
            text = yamlio.read_text(path)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: cannot read config: not UTF-8 text ({e.reason})") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
        try:
            lines = _yaml_key_lines(text, str(path))  # a repeated key: DuplicateKeyError (a ConfigError)
            data = yamlio.loads(text, str(path)) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
        source = _Source(str(path), lines)
    if overrides:
        extra = parse_overrides(overrides)
        data = deep_merge(data, extra)
        source.overridden = _dotted_keys(extra)
    if task is not None:
        if "task" in data and data["task"] != task:
            raise ConfigError(f"{source.at('task')}: task: config says {data['task']!r} but the command "
                              f"trains {task!r}")
        data["task"] = task
    t = data.get("task", "rm")
    if t in registry.MODES.get(t, ()):  # a task with a mode of its own name (dpo, sft) defaults to it
        obj = dict(data.get("objective") or {})
        obj.setdefault("mode", t)
        data["objective"] = obj
    try:
        cfg = _build(RunConfig, data, "")
    except ConfigError as e:
        raise source.located(e) from None
    validate(cfg, source)
    return cfg


# -------------------------------------------------------------------------------------------- validation

def check_fields(cfg, prefix: str = "") -> None:
    """The per-type rule on every leaf field of a config dataclass (sections recursively), so that a new
    field is checked without new code: int/float finite and in the field's ``range`` (:class:`Range`;
    none declared = any finite number), an int not a bool, a bool a bool, a str a str, and ``choices``."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        tp, optional = _base_type(hints[f.name])
        if _is_section(tp):
            check_fields(value, key + ".")
            continue
        if value is None and optional:
            continue
        if tp in (int, float):
            kind = "an integer" if tp is int else "a number"
            if isinstance(value, bool) or not isinstance(value, int if tp is int else (int, float)):
                raise _error(key, f"expected {kind}, got {value!r}")
            rule = f.metadata.get("range", FINITE)
            if value not in rule:
                allowed = rule.describe()
                need = (f"a finite number{f' ({allowed})' if allowed else ''}" if not math.isfinite(value)
                        else allowed)
                raise _error(key, f"must be {need}, got {value!r} ({f.metadata.get('help', '')})")
        elif tp is bool and not isinstance(value, bool):
            raise _error(key, f"expected true or false, got {value!r}")
        elif tp is str and not isinstance(value, str):
            raise _error(key, f"expected a string, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise _error(key, f"{value!r} is not allowed; allowed: {', '.join(map(str, choices))}")


def validate(cfg: RunConfig, source: str | _Source = "<config>") -> None:
    """Every field by its type's rule (:func:`check_fields`), then the checks that involve several keys.
    ``source`` (a name, or the loader's record of file lines and overrides) prefixes the message."""
    if not isinstance(source, _Source):
        source = _Source(str(source))
    try:
        check_fields(cfg)
        validate_fairness(cfg.objective, cfg.task)
        _validate_cross(cfg)
    except ConfigError as e:
        raise source.located(e) from None


def _validate_cross(cfg: RunConfig) -> None:
    t, d, tiny = cfg.train, cfg.data, cfg.model.tiny
    if not cfg.output_dir.strip():
        raise _error("output_dir", "must not be empty (it names the run directory)")
    if d.max_prompt_length >= d.max_length:
        raise _error("data.max_prompt_length",
                     f"must be < data.max_length ({d.max_length}), got {d.max_prompt_length}")
    if t.epochs == 0 and t.max_steps == -1:
        raise _error("train.epochs", f"must be > 0 unless train.max_steps is set, got {t.epochs}")
    # the shapes transformers' Llama accepts: hidden = heads * head_dim, head_dim even (RoPE rotates pairs),
    # heads a multiple of the key/value heads (GQA); anything else fails only at model build or forward
    if tiny.hidden_size % tiny.num_attention_heads:
        raise _error("model.tiny.hidden_size", f"must be a multiple of model.tiny.num_attention_heads "
                                               f"({tiny.num_attention_heads}), got {tiny.hidden_size}")
    if (tiny.hidden_size // tiny.num_attention_heads) % 2:
        raise _error("model.tiny.hidden_size",
                     f"hidden_size / num_attention_heads = {tiny.hidden_size // tiny.num_attention_heads} is "
                     f"odd; rotary embeddings need an even head size (e.g. hidden_size "
                     f"{2 * tiny.num_attention_heads * max(1, tiny.hidden_size // tiny.num_attention_heads)})")
    if tiny.num_attention_heads % tiny.num_key_value_heads:
        raise _error("model.tiny.num_key_value_heads",
                     f"must divide model.tiny.num_attention_heads ({tiny.num_attention_heads}), "
                     f"got {tiny.num_key_value_heads}")
    if cfg.task == "pg":
        parse_category_scale(cfg.pg.category_reward_scale)
    for key in ("train", "eval"):
        src = getattr(d, key)
        if src is None or src == "synthetic":
            continue
        if Path(src).expanduser().exists():
            from fairhpc.sources import check_local_source

            try:  # a directory that is no dataset, an empty file, an unknown suffix: before any compute
                check_local_source(src)
            except DataError as e:
                raise _error(f"data.{key}", str(e)) from None
            continue
        if src.endswith(DATA_SUFFIXES) or src.startswith((".", "/", "~")):
            raise _error(f"data.{key}", f"file not found: {src} (expected 'synthetic', an existing "
                                        f"{'/'.join(DATA_SUFFIXES)} file, or a hub dataset name)")


def parse_category_scale(text: str) -> dict[str, float]:
    """``pg.category_reward_scale`` ('cat=factor,...') as {category: factor}; factors finite and > 0."""
    out: dict[str, float] = {}
    for item in (x.strip() for x in (text or "").split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        try:
            factor = float(value) if sep else math.nan
        except ValueError:
            factor = math.nan
        if not name.strip() or not math.isfinite(factor) or factor <= 0 or name.strip() in out:
            raise _error("pg.category_reward_scale", f"{item!r} is not CATEGORY=FACTOR with a factor > 0 (each "
                                                     f"category once), in {text!r}")
        out[name.strip()] = factor
    return out


# ------------------------------------------------------------------------------------------- environment

def check_model_path(key: str, value: str | None, need_config: bool = True) -> None:
    """Refuse a local-looking model path that does not exist, is a file, or (``need_config``) is a directory
    without ``config.json``; a hub-looking name (``name`` or ``owner/name``) is accepted without network
    access.  Raises ModelPathError naming ``key`` and the path."""
    from fairhpc.sources import is_local_path

    if value is None or value == "tiny":
        return
    if not is_local_path(value):
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
            from huggingface_hub import snapshot_download

            try:  # offline: the hub name must already be in the cache (fairhpc/hub.py fetches it)
                snapshot_download(value, local_files_only=True)
            except Exception:  # noqa: BLE001 - any 'not cached' error of huggingface_hub
                import huggingface_hub.constants as hc

                raise _model_error(key, f"{value!r} is a hub name, HF_HUB_OFFLINE is set and it is not in the "
                                        f"cache {hc.HF_HUB_CACHE}; fetch it first (`fairhpc fetch-hub`, or rule "
                                        "fetch_hub of the workflow)") from None
        return
    p = Path(value).expanduser()
    if not p.exists():
        raise _model_error(key, f"{value!r} does not exist (a local path: absolute, ./, ../, a file suffix or "
                                f"under an existing directory); give a model directory such as a run's final/, "
                                f"or a hub name such as owner/model")
    if not p.is_dir():
        raise _model_error(key, f"{value!r} is a file; expected a model directory (with config.json)")
    if need_config and not (p / "config.json").is_file():
        raise _model_error(key, f"{value!r} is a directory without config.json, so not a saved transformers "
                                f"model; give a directory written by save_pretrained (e.g. a run's final/)")


def _model_error(key: str, msg: str) -> ConfigError:
    from fairhpc.errors import ModelPathError  # a ConfigError: exit 2, printed as a model path error

    err = ModelPathError(f"{key}: {msg}")
    err.key = key
    return err


def check_environment(cfg: RunConfig) -> None:
    """The checks that depend on this machine, for the engine to run before any data is read: the precision
    needs CUDA when it is bf16 or fp16; ``output_dir`` is (or can be created as) a writable directory; local
    model and tokenizer paths exist and hold a model.  Raises ConfigError (exit 2) naming key and value."""
    p = cfg.train.precision
    if p in ("bf16", "fp16"):
        import torch

        if not torch.cuda.is_available():
            raise _error("train.precision", f"{p!r} needs a CUDA GPU and none is visible here; use fp32 or "
                                            f"auto (bf16 on GPU, fp32 on CPU)")
    _check_output_dir(cfg.output_dir)
    check_model_path("model.name_or_path", cfg.model.name_or_path)
    check_model_path("model.ref_name_or_path", cfg.model.ref_name_or_path)
    check_model_path("model.tokenizer", cfg.model.tokenizer, need_config=False)


def _check_output_dir(output_dir: str) -> None:
    out = Path(output_dir).expanduser()
    if os.path.exists(out) and not os.path.isdir(out):
        raise _error("output_dir", f"{output_dir!r} is a file, not a directory")
    existing = out
    while not os.path.exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not os.path.isdir(existing):
        raise _error("output_dir", f"{output_dir!r} lies under {str(existing)!r}, which is a file, not a "
                                   f"directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == out else f"would be created in {str(existing)!r}, which is"
        raise _error("output_dir", f"{output_dir!r} {what} not writable")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def fields_help(cls=RunConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every leaf field: the configuration reference in README/CLI."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            rows += fields_help(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_ += f" (one of: {', '.join(map(str, f.metadata['choices']))})"
        elif _base_type(tp)[0] in (int, float):
            help_ += f" (allowed: {f.metadata.get('range', FINITE).describe() or 'any finite number'})"
        base, optional = _base_type(tp)
        type_name = base.__name__ + (" or null" if optional else "")  # no "|": the table is Markdown
        rows.append((prefix + f.name, type_name, default, help_))
    return rows
