"""Policy-gradient RLHF with reward dropout (``fairhpc train-pg``; docs/pg.md).

Every optimizer step, before its micro-batches run (``begin_step``), the task makes a rollout for all of
them: it generates ``pg.samples_per_prompt`` responses per prompt from the behaviour model beta (the frozen
reference) or from the current policy, scores them with the reward model, computes log beta(y) and
log pi(y), the update's weights and the reward-dropout mask over the whole step (over all data-parallel
ranks with ``pg.dropout_scope: global``: one all_gather).  Each micro-batch's loss then uses its part of
the rollout (fairhpc/pg/core.py has the formulas):

* offpolicy   mean_i NLL_pi(y_i) * stopgrad(w_i * (scale R_i - log pi(y_i)) * keep_i), w = pi/q clipped, q the
              sampler (beta by default, so w = pi/beta)
* reinforce   mean_i -(r_i - mean r) * keep_i * log pi(y_i), r_i = scale R_i - kl_coef (log pi - log ref)(y_i)
* ppo         token-level clipped surrogate (keep_i on each token of sample i) + vf_coef * clipped value loss,
              GAE(gamma, lambda) on per-token rewards -kl_coef (log pi_old - log ref) + scale R at the last
              token; one rollout serves pg.ppo_epochs optimizer steps (kept in RUN/pg_rollouts/ so that a
              resumed run continues with the same rollout)

Random draws (sampling, random dropout) of optimizer step s on rank r come from a generator seeded with
(seed, s, r) at the start of the step: a pure function of the step, so a run resumed from any checkpoint
draws exactly what the uninterrupted run drew, whatever else used torch's global generators in between
(e.g. a DataLoader iterator created at the resume).  The held-out evaluation uses a generator of its own
(the same seed at every evaluation), so it never shifts the training draws.  The adaptive dropout's running mean lives in a buffer
of the trained module and is saved with it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from fairhpc.errors import ConfigError, DataError
from fairhpc.pg import core
from fairhpc.pg.sampling import generate, join, left_pad
from fairhpc.tasks.base import Task

METRIC_KEYS = ("loss", "reward", "kept_share", "logp_beta", "logp_pi", "kl", "weight", "clipfrac",
               "value_loss", "length", "all_dropped", "f", "worst_group_reward", "best_group_reward", "group_gap")
EVAL_SEED_OFFSET = 7919  # the evaluation generator's seed is cfg.seed + this (+ rank)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the training draws of optimizer step ``step`` (0-based) on ``rank``."""
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + 17) % (2**63 - 1)
ROLLOUTS = "pg_rollouts"
GENERATIONS = "generations.jsonl"


class PolicyWithValue(torch.nn.Module):
    """The trained module: the causal LM, a value head (ppo) and the adaptive dropout's running statistics
    (sum and count of earlier signals, float64 stored bitwise in an int64 buffer so that no precision cast
    of the engine touches it).  ``save_pretrained`` writes the LM as transformers does (the value head, if
    any, beside it as value_head.safetensors)."""

    def __init__(self, lm, value_head: bool):
        super().__init__()
        self.lm = lm
        self.value_head = torch.nn.Linear(lm.config.hidden_size, 1) if value_head else None
        if self.value_head is not None:
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        self.register_buffer("dropout_stats", torch.zeros(2, dtype=torch.float64).view(torch.int64))

    @property
    def config(self):
        return self.lm.config

    def forward(self, **kwargs):
        return self.lm(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs):
        self.lm.gradient_checkpointing_enable(**kwargs)

    def running(self) -> tuple[float, float]:
        s, n = self.dropout_stats.view(torch.float64).tolist()
        return s, n

    def set_running(self, total: float, count: float) -> None:
        new = torch.tensor([total, count], dtype=torch.float64, device=self.dropout_stats.device)
        self.dropout_stats.copy_(new.view(torch.int64))

    def save_pretrained(self, path, state_dict=None, safe_serialization=True, **kw):
        from safetensors.torch import save_file

        sd = state_dict if state_dict is not None else self.state_dict()
        lm_sd = {k[len("lm."):]: v for k, v in sd.items() if k.startswith("lm.")}
        self.lm.save_pretrained(path, state_dict=lm_sd, safe_serialization=safe_serialization, **kw)
        head = {k[len("value_head."):]: v.contiguous() for k, v in sd.items() if k.startswith("value_head.")}
        if head:
            save_file(head, str(Path(path) / "value_head.safetensors"))


class PromptDataset:
    """Tokenized prompts: prompt_ids (cut to data.max_prompt_length on data.truncation_side), index."""

    def __init__(self, prompts: list, tokenizer, cfg, categories: list | None = None):
        d, pg = cfg.data, cfg.pg
        self.prompts, self.items, self.truncated = prompts, [], 0
        cats = categories if categories is not None and any(c is not None for c in categories) else None
        self.categories = sorted({c for c in cats if c is not None}) if cats else []
        cat_id = {c: i for i, c in enumerate(self.categories)}
        # each prompt's category id (-1: none); None when the data has no categories
        self.category_ids = [cat_id.get(c, -1) for c in cats] if cats else None
        for i, p in enumerate(prompts):
            if pg.prompt_format == "chat":
                text = tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                ids = tokenizer.encode(text, add_special_tokens=False)
            else:
                ids = tokenizer.encode(p)
            if len(ids) > d.max_prompt_length:
                self.truncated += 1
                ids = ids[-d.max_prompt_length:] if d.truncation_side == "left" else ids[:d.max_prompt_length]
            self.items.append({"prompt_ids": ids, "index": i})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def load_prompts(cfg, key: str) -> tuple[list, dict, list]:
    """Prompts of data.<key>: chat messages (prompt_format chat) or plain strings, the split's stats and each
    prompt's category (None where the row has none)."""
    from fairhpc.formats import _text_or_messages, synthetic_examples
    from fairhpc.sources import iter_source

    d, pg = cfg.data, cfg.pg
    source = getattr(d, key)
    limit = d.max_train_examples if key == "train" else d.max_eval_examples
    skipped, out, cats = 0, [], []
    if source == "synthetic":
        exs = synthetic_examples(d, "train" if key == "train" else "eval")
        msgs, cats = [ex.prompt for ex in exs], [ex.category for ex in exs]
    else:
        msgs = []
        for r in iter_source(source, d.train_split if key == "train" else d.eval_split):
            if limit is not None and len(msgs) >= limit:
                break
            try:
                if r.error is not None:
                    raise r.error
                if not isinstance(r.value, dict) or r.value.get(pg.prompt_field) is None:
                    cols = ", ".join(r.value) if isinstance(r.value, dict) else type(r.value).__name__
                    raise DataError(f"{r.where}: field {pg.prompt_field!r} (pg.prompt_field): missing (columns "
                                    f"present: {cols})", "missing_field")
                m = _text_or_messages(r.value[pg.prompt_field], pg.prompt_field, r.where, "user")
                if not m:
                    raise DataError(f"{r.where}: field {pg.prompt_field!r}: empty prompt", "empty_response")
                cat = r.value.get(pg.category_field)
                if isinstance(cat, int) and not isinstance(cat, bool):
                    cat = str(cat)  # an integer label (e.g. a topic id) names its category
                if cat is not None and not isinstance(cat, str):
                    raise DataError(f"{r.where}: field {pg.category_field!r} (pg.category_field): expected a string "
                                    f"or an integer label, got {cat!r}", "wrong_type")
                msgs.append(m)
                cats.append(cat)
            except DataError as e:
                if d.bad_rows == "error" or e.reason is None:
                    raise
                skipped += 1
    msgs = msgs[:limit] if limit is not None else msgs
    cats = cats[:len(msgs)]
    for m in msgs:
        if pg.prompt_words:
            m = [*m[:-1], {**m[-1], "content": " ".join(m[-1]["content"].split()[:pg.prompt_words])}]
        out.append(m if pg.prompt_format == "chat" else "\n\n".join(x["content"] for x in m))
    if not out:
        raise DataError(f"{source}: no prompts for data.{key}")
    return out, {"source": source, "prompts": len(out), "skipped": skipped}, cats


class PolicyGradientTask(Task):
    name = "pg"
    description = "a policy by policy-gradient RLHF with reward dropout (offpolicy, reinforce, ppo)"
    metric_keys = METRIC_KEYS
    progress_keys = ("loss", "reward", "kept_share")

    def __init__(self, cfg, tokenizer):
        super().__init__(cfg, tokenizer)
        from fairhpc.pg.reward import check_reward_source

        pg, t = cfg.pg, cfg.train
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.sample_from = pg.sample_from if pg.sample_from != "auto" else (
            "behaviour" if pg.algo == "offpolicy" else "policy")
        if pg.algo != "offpolicy" and self.sample_from == "behaviour":
            raise ConfigError(f"pg.sample_from: behaviour needs pg.algo: offpolicy (importance-weighted); "
                              f"{pg.algo} learns from the policy's own samples (use policy or auto)")
        n_rank_step = t.micro_batch_size * t.grad_accum * pg.samples_per_prompt
        if pg.dropout == "random" and core.random_drop_count(pg.dropout_rate, n_rank_step) >= n_rank_step:
            raise ConfigError(
                f"pg.dropout_rate: {pg.dropout_rate} with random dropout drops round({pg.dropout_rate} x "
                f"{n_rank_step}) = {core.random_drop_count(pg.dropout_rate, n_rank_step)} of the {n_rank_step} "
                "samples of a step on each rank (train.micro_batch_size x train.grad_accum x "
                "pg.samples_per_prompt): every sample; lower the rate or raise the batch")
        self.label = check_reward_source(pg)  # before any data is read
        self.ref = None
        self.reward = None
        self._queue: list[dict] = []
        self._store: list[dict] | None = None   # ppo: the rollout of the current ppo_epochs cycle
        self._store_step = -1
        self._targets = self._target_words()

    def _target_words(self):
        """The planted words of a classifier made by `fairhpc pg-classifier` (its summary.json), if any."""
        import json

        p = Path(self.cfg.pg.reward_model) / "summary.json"
        try:
            return tuple(json.loads(p.read_text()).get("target_words") or ()) if p.is_file() else ()
        except (OSError, ValueError):
            return ()

    # ---- data
    def build_datasets(self):
        d, o = self.cfg.data, self.cfg.objective
        train_p, st, train_c = load_prompts(self.cfg, "train")
        train = PromptDataset(train_p, self.tokenizer, self.cfg, train_c)
        st["truncated"] = train.truncated
        st["categories"] = train.categories
        if o.mode in ("fr", "fc") and self.cfg.pg.fair_groups == "category" and not train.categories:
            raise ConfigError(f"pg.fair_groups: category, but the prompts of data.train ({d.train}) have no "
                              f"{self.cfg.pg.category_field!r} field (pg.category_field); give the rows a "
                              "category or use pg.fair_groups: prompt")
        from fairhpc.config import parse_category_scale

        self._cat_scale = parse_category_scale(self.cfg.pg.category_reward_scale)
        unknown = sorted(set(self._cat_scale) - set(train.categories))
        if unknown:
            raise ConfigError(f"pg.category_reward_scale: {', '.join(unknown)} not among the categories of "
                              f"data.train ({', '.join(train.categories) or 'none'})")
        stats = {"max_prompt_length": d.max_prompt_length, "train": st}
        ev = None
        if d.eval is not None:
            eval_p, se, eval_c = load_prompts(self.cfg, "eval")
            ev = PromptDataset(eval_p, self.tokenizer, self.cfg, eval_c)
            se["truncated"] = ev.truncated
            se["categories"] = ev.categories
            stats["eval"] = se
        self.datasets = {"train": train, "eval": ev}
        return train, ev, stats

    def collate(self, rows):
        ids, mask = left_pad([r["prompt_ids"] for r in rows], self.pad_id)
        return {"prompt_ids": ids, "prompt_mask": mask, "index": torch.tensor([r["index"] for r in rows])}

    # ---- models
    def _load_lm(self, name, engine, random_init=False):
        from fairhpc.models import load_policy, resolve_attn_implementation

        attn = resolve_attn_implementation(self.cfg.model.attn_implementation, engine.device)
        dtype = torch.bfloat16 if engine.precision == "bf16" else None
        if random_init:
            from transformers import AutoConfig, AutoModelForCausalLM

            config = AutoConfig.from_pretrained(name)
            config._attn_implementation = attn
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
        return load_policy(name, dtype=dtype, attn_implementation=attn, tokenizer=self.tokenizer)

    def build_model(self, engine):
        from fairhpc.models import build_tiny_policy, resolve_attn_implementation

        m = self.cfg.model
        if m.name_or_path == "tiny":
            lm = build_tiny_policy(m.tiny, self.tokenizer,
                                   resolve_attn_implementation(m.attn_implementation, engine.device))
        else:
            lm = self._load_lm(m.name_or_path, engine, random_init=self.cfg.pg.policy_init == "random")
        return PolicyWithValue(lm, value_head=self.cfg.pg.algo == "ppo")

    def before_engine(self, engine, model) -> None:
        """The frozen behaviour / reference model beta and the reward model."""
        import copy

        from fairhpc.pg.reward import RewardSource

        m = self.cfg.model
        if m.name_or_path == "tiny" and m.ref_name_or_path in (None, "tiny"):
            ref = copy.deepcopy(model.lm)  # beta is the initial policy
        else:
            ref = self._load_lm(m.ref_name_or_path or m.name_or_path, engine)
        self.ref = engine.frozen_model(ref)
        dtype = torch.bfloat16 if engine.precision == "bf16" else None
        self.reward = RewardSource(self.cfg.pg, engine.device, dtype=dtype)

    # ---- one rollout
    def _stop_early(self) -> bool:
        return self.cfg.train.zero_stage != 3  # ZeRO-3 ranks must run the same number of forwards

    @torch.no_grad()
    def _samples(self, engine, sampler, batch, n_per_prompt: int, generator,
                 split: str = "train") -> dict:
        """Generate and score: the rollout fields every algorithm needs, for one micro-batch."""
        from fairhpc.models import sequence_logps

        pg, dev = self.cfg.pg, engine.device
        p_ids = batch["prompt_ids"].to(dev).repeat_interleave(n_per_prompt, 0)
        p_mask = batch["prompt_mask"].to(dev).repeat_interleave(n_per_prompt, 0)
        index = batch["index"].repeat_interleave(n_per_prompt, 0)
        resp, r_mask = generate(sampler, p_ids, p_mask, pg.max_new_tokens, pg.decoding, pg.temperature,
                                pg.top_k, self.eos_id if self._stop_early() else None, self.pad_id, generator)
        ids, mask, labels = join(p_ids, p_mask, resp, r_mask, self.pad_id)
        texts = self.tokenizer.batch_decode(resp.masked_fill(~r_mask.bool(), self.pad_id).tolist(),
                                            skip_special_tokens=True)
        prompts = [self.datasets[split].prompts[int(i)] for i in index]
        reward = self.reward.score(prompts, texts).float()
        ds = self.datasets[split]
        if getattr(self, "_cat_scale", None) and ds.category_ids is not None:  # the planted handicap
            scale = [self._cat_scale.get(ds.categories[ds.category_ids[int(i)]], 1.0)
                     if ds.category_ids[int(i)] >= 0 else 1.0 for i in index]
            reward = reward * torch.tensor(scale, dtype=reward.dtype, device=reward.device)
        policy = engine.engine.module
        lp_beta = sequence_logps(self.ref, ids, mask, labels).float()
        lp_pi = sequence_logps(policy, ids, mask, labels).float()
        return {"ids": ids, "mask": mask, "labels": labels, "prompt_width": p_ids.shape[1], "resp_mask": r_mask,
                "reward": reward, "logp_beta": lp_beta, "logp_pi": lp_pi, "texts": texts, "index": index,
                "length": r_mask.sum(1).float()}

    def _token_terms(self, model, ro, grad: bool):
        """Per-response-token log-probs [B, T] (and values [B, T] with a value head) of the rollout."""
        P, T = ro["prompt_width"], ro["resp_mask"].shape[1]
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            out = model(input_ids=ro["ids"], attention_mask=ro["mask"], use_cache=False,
                        output_hidden_states=True)
            logits = out.logits[:, P - 1:P - 1 + T].float()
            tok = ro["ids"][:, P:P + T]
            lp = torch.gather(logits, 2, tok.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
            module = model.module if hasattr(model, "module") else model
            values = None
            if getattr(module, "value_head", None) is not None:
                h = out.hidden_states[-1][:, P - 1:P - 1 + T]
                values = module.value_head(h.to(module.value_head.weight.dtype)).squeeze(-1).float()
        m = ro["resp_mask"].float()
        return lp * m, (values * m if values is not None else None)

    def _ref_token_logps(self, ro):
        P, T = ro["prompt_width"], ro["resp_mask"].shape[1]
        with torch.no_grad():
            logits = self.ref(input_ids=ro["ids"], attention_mask=ro["mask"], use_cache=False).logits
            logits = logits[:, P - 1:P - 1 + T].float()
            tok = ro["ids"][:, P:P + T]
            lp = torch.gather(logits, 2, tok.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        return lp * ro["resp_mask"].float()

    def _gather(self, engine, x: torch.Tensor) -> torch.Tensor:
        """x of every rank, concatenated in rank order (equal sizes: the engine's shards are equal)."""
        parts = [torch.empty_like(x) for _ in range(engine.world)]
        dist.all_gather(parts, x.contiguous(), group=engine.group)
        return torch.cat(parts)

    def _step_generator(self, engine) -> torch.Generator:
        gen = torch.Generator(device=engine.device)
        gen.manual_seed(step_seed(self.cfg.seed, engine.global_step, engine.rank))
        return gen

    def _masks(self, engine, model, signal: torch.Tensor, gen) -> tuple[torch.Tensor, bool]:
        """Dropout mask of this rank's samples of the step (see fairhpc/pg/core.py for each kind)."""
        pg = self.cfg.pg
        module = model.module
        glob = pg.dropout_scope == "global" and engine.world > 1 and pg.dropout != "random"
        full = self._gather(engine, signal) if glob else signal
        running = None
        if pg.dropout == "adaptive":
            total, count = module.running()
            running = total / count if count > 0 else None
        mask = core.dropout_mask(full, pg.dropout, pg.dropout_rate, running_mean=running, generator=gen)
        try:
            mask, dropped = core.apply_all_dropped(mask, full, pg.all_dropped)
        except FloatingPointError as e:
            raise ConfigError(f"pg.all_dropped: error: {e}") from None
        if pg.dropout == "adaptive":
            total, count = module.running()
            module.set_running(total + float(full.double().sum()), count + full.numel())
        if glob:
            n = signal.numel()
            mask = mask[engine.rank * n:(engine.rank + 1) * n]
        return mask, dropped

    def begin_step(self, engine, model, batches) -> None:
        pg = self.cfg.pg
        if pg.algo == "ppo":
            self._queue = self._ppo_rollout(engine, model, batches)
            return
        policy = engine.engine.module
        sampler = self.ref if self.sample_from == "behaviour" else policy
        gen = self._step_generator(engine)
        ros = [self._samples(engine, sampler, b, pg.samples_per_prompt, gen) for b in batches]
        cat = {k: torch.cat([r[k] for r in ros]) for k in ("reward", "logp_beta", "logp_pi", "index")}
        R, lb, lp = cat["reward"], cat["logp_beta"], cat["logp_pi"]
        lq = lb if self.sample_from == "behaviour" else lp  # log-prob under the sampler
        iw = torch.exp(lp - lq) if pg.algo == "offpolicy" else None  # unclipped: the group means' estimator
        R, fair = self._fair(R, cat["index"], iw)
        if pg.algo == "offpolicy":
            w = core.importance_weights(lp, lq, pg.clip)
            adv = w * (pg.reward_scale * R - lp)
        else:
            ret = core.reinforce_returns(R, lp, lb, pg.kl_coef, pg.reward_scale)
            base = ret.mean()
            w = torch.ones_like(R)
            adv = ret - base
        signal = {"R": R, "R+logbeta": pg.reward_scale * R + lb, "advantage": adv}[pg.dropout_signal]
        keep, dropped = self._masks(engine, engine.engine, signal, gen)
        n_step, G = R.numel(), self.cfg.train.grad_accum
        start = 0
        for ro in ros:
            n = ro["reward"].numel()
            sl = slice(start, start + n)
            start += n
            ro.update(keep=keep[sl], weight=w[sl], adv=adv[sl], scale=G / n_step, dropped=float(dropped),
                      coef=(adv[sl] * keep[sl]) if pg.algo == "offpolicy" else None, fair=fair)
        self._queue = ros

    def _fair(self, R: torch.Tensor, index: torch.Tensor, weights=None) -> tuple[torch.Tensor, dict]:
        """The step's rewards shaped by objective.mode (fr / fc; pg: unchanged) over the groups of
        pg.fair_groups, and the step's group statistics (fairhpc/pg/fair.py).  Groups are taken over this
        rank's samples of the step; the shaping comes before reward dropout, which then ranks shaped rewards."""
        from fairhpc.pg.fair import fair_rewards

        o, pg = self.cfg.objective, self.cfg.pg
        ds = self.datasets["train"]
        if pg.fair_groups == "category" and ds.category_ids is not None:
            groups = torch.tensor([ds.category_ids[int(i)] for i in index], device=R.device)
        else:
            groups = index.to(R.device)
        return fair_rewards(R, groups, o.mode, alpha=o.alpha, tau=o.tau, gamma=o.gamma, weights=weights)

    # ---- ppo
    def _rollout_path(self, engine, step: int) -> Path:
        return engine.run.root / ROLLOUTS / f"rank{engine.rank}_step{step:08d}.pt"

    def _save_rollout(self, engine, step: int, ros: list[dict]) -> None:
        from fairhpc import runstate

        path = self._rollout_path(engine, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save([{k: (v.cpu() if torch.is_tensor(v) else v) for k, v in r.items()} for r in ros], tmp)
        os.replace(tmp, path)
        ckpts = runstate.complete_checkpoints(engine.run.checkpoints) if engine.run.checkpoints.is_dir() else []
        if ckpts:  # a resume starts at a kept checkpoint: the rollouts before the oldest one are not needed
            K = self.cfg.pg.ppo_epochs
            oldest = min(runstate.step_of(p) for p in ckpts) // K * K
            for f in path.parent.glob(f"rank{engine.rank}_step*.pt"):
                if int(f.stem.split("_step")[1]) < oldest:
                    f.unlink(missing_ok=True)

    def _ppo_rollout(self, engine, model, batches) -> list[dict]:
        pg = self.cfg.pg
        K, step = pg.ppo_epochs, engine.global_step
        first = step - step % K
        if self._store is None or self._store_step != first:
            if step % K == 0:
                self._store = self._new_ppo_rollout(engine, model, batches)
                if K > 1:
                    self._save_rollout(engine, step, self._store)
            else:  # a resumed run in the middle of a ppo_epochs cycle: the rollout its first step made
                path = self._rollout_path(engine, first)
                if not path.exists():
                    raise ConfigError(f"pg.ppo_epochs: resuming at step {step} needs the rollout of step {first} "
                                      f"({path}), which is missing; start the run afresh")
                stored = torch.load(path, weights_only=False)
                self._store = [{k: (v.to(engine.device) if torch.is_tensor(v) else v) for k, v in r.items()}
                               for r in stored]
            self._store_step = first
        return list(self._store)

    def _new_ppo_rollout(self, engine, model, batches) -> list[dict]:
        pg = self.cfg.pg
        policy = engine.engine.module
        gen = self._step_generator(engine)
        ros = [self._samples(engine, policy, b, pg.samples_per_prompt, gen) for b in batches]
        shaped, fair = self._fair(torch.cat([ro["reward"] for ro in ros]), torch.cat([ro["index"] for ro in ros]))
        start = 0
        for ro in ros:  # ppo: the shaped reward is the last token's reward, before GAE
            n = ro["reward"].numel()
            ro["fair_reward"], ro["fair"] = shaped[start:start + n], fair
            start += n
        for ro in ros:
            lp_tok, v = self._token_terms(policy, ro, grad=False)
            ref_tok = self._ref_token_logps(ro)
            m = ro["resp_mask"].float()
            rew = core.token_rewards(ro["fair_reward"], lp_tok, ref_tok, m, pg.kl_coef, pg.reward_scale)
            adv, ret = core.gae(rew, v, m, pg.gamma, pg.gae_lambda)
            ro.update(old_tok=lp_tok, old_values=v, returns=ret, adv_tok=adv, tok_mask=m)
        # the sample's advantage (dropout signal "advantage") is A at its first response token
        seq_adv = torch.cat([ro["adv_tok"][:, 0] for ro in ros])
        R = torch.cat([ro["fair_reward"] for ro in ros])
        lb = torch.cat([ro["logp_beta"] for ro in ros])
        signal = {"R": R, "R+logbeta": pg.reward_scale * R + lb, "advantage": seq_adv}[pg.dropout_signal]
        keep, dropped = self._masks(engine, engine.engine, signal, gen)
        if pg.whiten_advantages:
            allm = torch.cat([ro["tok_mask"] for ro in ros])
            alla = core.whiten(torch.cat([ro["adv_tok"] for ro in ros]), allm)
        n_tokens = float(sum(ro["tok_mask"].sum() for ro in ros))
        start, G = 0, self.cfg.train.grad_accum
        for ro in ros:
            n = ro["reward"].numel()
            sl = slice(start, start + n)
            if pg.whiten_advantages:
                ro["adv_tok"] = alla[sl]
            start += n
            ro.update(keep=keep[sl], adv=seq_adv[sl], weight=torch.ones(n, device=keep.device),
                      scale=G / max(n_tokens, 1.0), dropped=float(dropped))
        return ros

    # ---- the loss of one micro-batch
    def loss(self, engine, model, batch):
        from fairhpc.models import sequence_logps

        pg = self.cfg.pg
        ro = self._queue.pop(0)
        keep = ro["keep"]
        metrics = {"reward": ro["reward"].mean(), "kept_share": keep.mean(), "logp_beta": ro["logp_beta"].mean(),
                   "logp_pi": ro["logp_pi"].mean(), "kl": (ro["logp_pi"] - ro["logp_beta"]).mean(),
                   "weight": ro["weight"].mean(), "clipfrac": 0.0, "value_loss": 0.0,
                   "length": ro["length"].mean(), "all_dropped": ro["dropped"],
                   **{k: ro["fair"][k] for k in ("f", "worst_group_reward", "best_group_reward", "group_gap")}}
        if pg.algo == "ppo":
            lp_tok, values = self._token_terms(model, ro, grad=True)
            m = ro["tok_mask"]
            pol, clipped = core.ppo_policy_terms(lp_tok, ro["old_tok"], ro["adv_tok"], m, pg.ppo_clip)
            val = core.ppo_value_terms(values, ro["old_values"], ro["returns"], m, pg.value_clip)
            pol = pol * keep.unsqueeze(1)
            loss = (pol.sum() + pg.vf_coef * val.sum()) * ro["scale"]
            metrics.update(clipfrac=clipped.sum() / m.sum().clamp(min=1),
                           value_loss=val.detach().sum() / m.sum().clamp(min=1))
        else:
            lp = sequence_logps(model, ro["ids"], ro["mask"], ro["labels"])
            if pg.algo == "offpolicy":
                terms = -lp * ro["coef"]
            else:
                terms = core.reinforce_terms(ro["adv"], lp, keep, 0.0)
            loss = terms.sum() * ro["scale"]
        # the engine divides by grad_accum: `scale` = grad_accum / samples (tokens) of the rank's step, so the
        # step's gradient is that of the mean over all its samples
        metrics["loss"] = loss.detach() / self.cfg.train.grad_accum
        return loss, metrics

    def nonfinite_hint(self) -> str | None:
        return ("the policy-gradient loss is not finite: lower train.lr, pg.reward_scale or pg.clip "
                "(importance weights), or check the reward model's outputs")

    # ---- evaluation
    @torch.no_grad()
    def eval_records(self, engine, model, dataset) -> list[dict]:
        """One generation per held-out prompt from the current policy (the evaluation generator, seeded the
        same at every evaluation), with its reward and log-likelihoods; all ranks' records, in prompt order."""
        from fairhpc.pg.synthetic import has_planted

        dev = engine.device
        gen = torch.Generator(device=dev)
        gen.manual_seed(self.cfg.seed + EVAL_SEED_OFFSET + engine.rank)
        policy = engine.engine.module
        recs = []
        for batch in engine.eval_loader(dataset):
            ro = self._samples(engine, policy, batch, 1, generator=gen, split="eval")
            for j in range(ro["reward"].numel()):
                rec = {"index": int(ro["index"][j]), "response": ro["texts"][j], "reward": float(ro["reward"][j]),
                       "logp_beta": float(ro["logp_beta"][j]), "logp_pi": float(ro["logp_pi"][j]),
                       "length": int(ro["length"][j])}
                if self._targets:
                    rec["planted"] = float(has_planted(ro["texts"][j], self._targets))
                recs.append(rec)
        parts = [None] * engine.world
        dist.all_gather_object(parts, recs)
        by_index = {r["index"]: r for part in parts for r in part}  # the sampler's padding repeats a few
        return [by_index[i] for i in sorted(by_index)]

    def evaluate(self, engine, model, dataset) -> dict:
        recs = self.eval_records(engine, model, dataset)
        self._last_eval = (engine.global_step, recs)
        n = len(recs)
        out = {"reward_mean": sum(r["reward"] for r in recs) / n,
               "logp_beta_mean": sum(r["logp_beta"] for r in recs) / n,
               "logp_pi_mean": sum(r["logp_pi"] for r in recs) / n,
               "kl_mean": sum(r["logp_pi"] - r["logp_beta"] for r in recs) / n,
               "length_mean": sum(r["length"] for r in recs) / n, "examples": n}
        if self._targets:
            out["planted_share"] = sum(r["planted"] for r in recs) / n
        out.update(self._group_report(recs, dataset))
        return out

    def _group_report(self, recs: list[dict], dataset) -> dict:
        """Held-out reward per category (where the prompts have categories): the means, the worst and best,
        their gap and f_tau of their allocation (objective.tau), as the training steps report per group."""
        from fairhpc.pg.fair import fairness_of

        ids = getattr(dataset, "category_ids", None)
        if not ids:
            return {}
        by: dict[str, list[float]] = {}
        for r in recs:
            j = ids[r["index"]]
            by.setdefault(dataset.categories[j] if j >= 0 else "none", []).append(r["reward"])
        means = {c: sum(v) / len(v) for c, v in sorted(by.items())}
        mu = torch.tensor(list(means.values()), dtype=torch.float64)
        return {"reward_by_category": means, "worst_category_reward": float(mu.min()),
                "best_category_reward": float(mu.max()), "category_gap": float(mu.max() - mu.min()),
                "f_category": float(fairness_of(mu, self.cfg.objective.tau))}

    def finish(self, engine) -> None:
        """RUN/generations.jsonl: the final policy's held-out generations with reward and likelihoods."""
        from fairhpc.io import atomic_write_text

        if engine.eval_ds is None:
            return
        last = getattr(self, "_last_eval", None)
        recs = last[1] if last and last[0] == engine.global_step else self.eval_records(
            engine, engine.engine, engine.eval_ds)
        if engine.is_main:
            import json

            prompts = self.datasets["eval"].prompts
            text = "".join(json.dumps({"prompt": prompts[r["index"]], **r}) + "\n" for r in recs)
            atomic_write_text(engine.run.root / GENERATIONS, text)
        dist.barrier()

    # ---- summary.json
    def summary_fields(self) -> dict:
        pg, o = self.cfg.pg, self.cfg.objective
        fair = {"alpha": o.alpha, "tau": o.tau, "fair_groups": pg.fair_groups} if o.mode == "fr" else \
            {"gamma": o.gamma, "tau": o.tau, "fair_groups": pg.fair_groups} if o.mode == "fc" else {}
        return {"mode": o.mode, **fair, "algo": pg.algo, "sample_from": self.sample_from, "dropout": pg.dropout,
                "dropout_rate": pg.dropout_rate, "dropout_signal": pg.dropout_signal,
                "dropout_scope": pg.dropout_scope, "decoding": pg.decoding, "reward_model": pg.reward_model,
                "target_label": pg.target_label}


TASK = PolicyGradientTask
