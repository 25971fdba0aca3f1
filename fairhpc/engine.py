"""The training engine: one DeepSpeed loop for every task (fairhpc/tasks/).

The engine knows devices, precision, data-parallel sharding, the optimizer and its schedule, gradient
accumulation and clipping, signals, checkpoints and resume, metrics, evaluation calls and the final
``save_pretrained``.  It knows nothing about what is trained: a task (``fairhpc.tasks.base.Task``) says
which model it builds, how it reads and collates its data, and what one micro-batch's loss and metrics are.

Outline of :meth:`Engine.__init__` and :meth:`Engine.train`:
  1. tokenizer and data (a bad data file fails before any process group or model exists), then the
     distributed set-up (torchrun / deepspeed / srun env, or a single process), seeds, output dir
  2. the task's model, deepspeed.initialize with the ZeRO config of ``train.zero_stage``
     (fairhpc/ds_configs/zeroN.json, filled in by fairhpc/ds_config.py), AdamW and a warmup + cosine
     schedule counted in optimizer steps
  3. the task's own set-up that needs the engine (e.g. outputs of a frozen model computed once)
  4. the loop: task.loss per micro-batch, backward, step; metrics JSONL (also to the experiment trackers of
     ``train.report_to``, fairhpc/tracking.py), tqdm, checkpoints every
     ``save_steps``, held-out evaluation, SIGTERM/SIGUSR1 -> checkpoint and exit
  5. final ``save_pretrained`` (safetensors + tokenizer), the task's finishing work, summary.json
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import socket
import time

import numpy as np
import torch
import torch.distributed as dist
import yaml

from fairhpc import runstate
from fairhpc.config import RunConfig, to_dict
from fairhpc.ds_config import build_ds_config
from fairhpc.errors import ConfigError, FairhpcError
from fairhpc.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from fairhpc.layout import RunDir
from fairhpc.tracking import Trackers, check_trackers, open_trackers

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the job stopped on a signal after saving a checkpoint


class Preempted(Exception):
    """Raised after a checkpoint was written because SIGTERM/SIGUSR1 arrived."""


class CheckpointError(FairhpcError):
    """A checkpoint could not be written (e.g. a full disk) or none could be read back."""

    kind = "checkpoint"


class NonFiniteError(FairhpcError):
    """The loss or the gradient norm became NaN or infinite: the run stops before writing that step."""

    kind = "training"


# ------------------------------------------------------------------------------------------ set-up
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed():
    """Initialise torch.distributed via DeepSpeed (gloo on CPU, nccl on GPU); returns (rank, world, device)."""
    import deepspeed

    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        # launched by srun without torchrun: one task per GPU
        os.environ.setdefault("RANK", os.environ["SLURM_PROCID"])
        os.environ.setdefault("WORLD_SIZE", os.environ["SLURM_NTASKS"])
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    for k, v in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    os.environ.setdefault("MASTER_PORT", str(_free_port()) if os.environ["WORLD_SIZE"] == "1" else "29500")
    # compiled DeepSpeed ops: a folder per environment, stale build locks taken over, bounded waits, and no
    # shared-memory comm op for a single process (fairhpc/ops.py)
    from fairhpc.ops import prepare_ops

    prepare_ops(int(os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return dist.get_rank(), dist.get_world_size(), device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def resolve_precision(cfg: RunConfig, device: torch.device) -> str:
    p = cfg.train.precision
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p in ("bf16", "fp16") and device.type != "cuda":
        raise ConfigError(f"train.precision: {p} needs a GPU; use fp32 (or auto) on CPU")
    return p


def lr_lambda(total: int, warmup: int, kind: str):
    """Multiplier of the peak lr at optimizer step s: linear warmup, then cosine / linear decay to 0."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class ShardSampler(torch.utils.data.Sampler):
    """DistributedSampler order (seeded per epoch, padded to equal shard sizes) that can start mid-epoch."""

    def __init__(self, dataset, rank: int, world: int, seed: int, shuffle: bool = True):
        self.inner = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                         shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(self.inner)[self.skip:])

    def __len__(self):
        return len(self.inner) - self.skip


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ------------------------------------------------------------------------------------------ the engine
class Engine:
    """Runs one task's training with DeepSpeed.  ``task_cls`` defaults to the registered task of cfg.task."""

    def __init__(self, cfg: RunConfig, resume: bool = False, task_cls=None, on_mismatch: str = "error",
                 overwrite: bool = False, then_eval: list[str] | None = None):
        import deepspeed

        from fairhpc.config import check_environment
        from fairhpc.tasks import get_task
        from fairhpc.tokenizer import load_tokenizer

        check_environment(cfg)  # device, output_dir and model paths: before any data is read
        check_trackers(cfg)  # the packages of train.report_to (fairhpc/tracking.py), before any data is read
        self.cfg = cfg
        self.run = RunDir(cfg.output_dir)
        self.out = self.run.root
        # 1. tokenizer and data first: a bad data file fails before any process group or model exists
        self.tokenizer = load_tokenizer(cfg.model)
        self.task = (task_cls or get_task(cfg.task))(cfg, self.tokenizer)
        # the evaluation command to run in-process at the end, checked now (before any compute)
        self.then_eval = self.task.parse_then_eval(then_eval, self.run) if then_eval else None
        self.train_ds, self.eval_ds, stats = self.task.build_datasets()
        self.rank, self.world, self.device = setup_distributed()
        self.is_main = self.rank == 0
        self.precision = resolve_precision(cfg, self.device)
        self.group = None  # the default (data-parallel) process group
        # the task's checks that need the device (e.g. the loss implementation) come before any model
        self.task.check_device(self.device)
        # 2. the run directory belongs to one configuration (fairhpc/runstate.py): decided on rank 0
        self.identity = runstate.run_identity(cfg, self.world)
        self.resuming = self._decide_run_dir(resume, on_mismatch, overwrite) == "resume"
        set_seed(cfg.seed)

        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.resuming:
                runstate.write_identity(self.run, self.identity)
            atomic_write_text(self.run.config, yaml.safe_dump(to_dict(cfg), sort_keys=False))
            atomic_write_json(self.run.data_stats, stats)
        self.collate = self.task.collate
        self.sampler = ShardSampler(self.train_ds, self.rank, self.world, cfg.seed)
        # a generator of its own: starting an epoch (iter) would otherwise draw the workers' base seed from the
        # global RNG, which a resume restores after that draw, so a resumed run's dropout would shift
        self.loader = torch.utils.data.DataLoader(
            self.train_ds, batch_size=cfg.train.micro_batch_size, sampler=self.sampler,
            collate_fn=self.collate, num_workers=cfg.train.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed))
        t = cfg.train
        # an epoch is steps_per_epoch full optimizer steps; the last micro_per_epoch % grad_accum micro-batches
        # of an epoch are not used (each epoch reshuffles, so no example is left out every time)
        self.micro_per_epoch = len(self.loader)
        self.steps_per_epoch = self.micro_per_epoch // t.grad_accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.grad_accum: {t.grad_accum} micro-batches per optimizer step, but an epoch "
                              f"has only {self.micro_per_epoch} micro-batches of train.micro_batch_size="
                              f"{t.micro_batch_size} per rank; lower grad_accum or micro_batch_size")
        self.micro_used_per_epoch = self.steps_per_epoch * t.grad_accum
        self.total_steps = t.max_steps if t.max_steps > 0 else max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.warmup = t.warmup_steps if t.warmup_steps >= 0 else math.ceil(t.warmup_ratio * self.total_steps)

        # 3. the task's model and the DeepSpeed engine with our AdamW and schedule (stepped by DeepSpeed
        #    once per optimizer step)
        ds_config = build_ds_config(cfg, self.precision)
        self._hf_ds = None
        if t.zero_stage == 3 and cfg.model.name_or_path != "tiny":
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds = HfDeepSpeedConfig(ds_config)  # keeps from_pretrained under zero.Init
        model = self.task.build_model(self)
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.task.before_engine(self, model)
        optim = torch.optim.AdamW(param_groups(model, t.weight_decay), lr=t.lr, betas=(t.adam_beta1, t.adam_beta2))
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_lambda(self.total_steps, self.warmup, t.scheduler))
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optim, lr_scheduler=sched,
                                                    config=ds_config)
        # 4. the task's set-up that needs the engine
        self.task.setup(self)

        self.global_step, self.epoch, self.micro_in_epoch = 0, 0, 0
        if self.resuming:
            self._resume()
        self._stop = False
        # experiment trackers (rank 0; none by default): the resolved config now, metrics lines as they are
        # written, the summaries at the end
        self.trackers: Trackers = open_trackers(cfg, self.run, self.global_step, self.is_main)

    def _decide_run_dir(self, resume: bool, on_mismatch: str, overwrite: bool) -> str:
        """"fresh" or "resume", decided on rank 0 and shared; a refusal is raised on every rank."""
        decision = [None, None]
        if self.is_main:
            try:
                decision[0] = runstate.prepare_run_dir(self.run, self.identity, resume, on_mismatch, overwrite)
            except ConfigError as e:
                decision[1] = str(e)
        dist.broadcast_object_list(decision, src=0)
        if decision[1] is not None:
            raise ConfigError(decision[1])
        return decision[0]

    # ---------------------------------------------------------------------------------- helpers for tasks
    def ds_config(self, zero_stage: int | None = None) -> dict:
        return build_ds_config(self.cfg, self.precision, zero_stage)

    def frozen_model(self, model):
        """A frozen model beside the trained one, placed like it: a ZeRO-3 inference engine sharding it under
        train.zero_stage 3, else moved to this rank's device; in eval mode, no gradients."""
        import deepspeed

        model.requires_grad_(False).eval()
        if self.cfg.train.zero_stage == 3:
            model = deepspeed.initialize(model=model, config=self.ds_config(zero_stage=3))[0]
            model.eval()
            return model
        return model.to(self.device)

    def eval_loader(self, dataset):
        """This rank's shard of `dataset` in a fixed order, batched like training."""
        sampler = ShardSampler(dataset, self.rank, self.world, 0, shuffle=False)
        return torch.utils.data.DataLoader(dataset, batch_size=self.cfg.train.micro_batch_size, sampler=sampler,
                                           collate_fn=self.collate, generator=torch.Generator().manual_seed(0))

    def gather_by_index(self, dataset, fn, desc: str | None = None, fill: float = float("nan")) -> torch.Tensor:
        """Apply `fn(batch) -> [b, ...]` to every example of `dataset`, spread over the ranks.

        Returns the [len(dataset), ...] table on every rank (float32, CPU), row i from example i.  The
        sampler's padding repeats some examples; each index is written once with the same value.
        """
        from tqdm.auto import tqdm

        idx_parts, val_parts = [], []
        loader = self.eval_loader(dataset)
        for batch in tqdm(loader, desc=desc, disable=desc is None or not self.is_main):
            val_parts.append(fn(batch).float().cpu())
            idx_parts.append(batch["index"])
        gathered = [None] * self.world
        dist.all_gather_object(gathered, (torch.cat(idx_parts), torch.cat(val_parts)))
        table = torch.full((len(dataset), *val_parts[0].shape[1:]), fill)
        for idx, val in gathered:
            table[idx] = val
        return table

    # ---------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """The task's metrics over the whole held-out set (all ranks' shards gathered)."""
        if self.eval_ds is None or len(self.eval_ds) == 0:
            return None
        self.engine.eval()
        out = self.task.evaluate(self, self.engine, self.eval_ds)
        self.engine.train()
        return out

    # ---------------------------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict:
        return {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
                "numpy_rng": np.random.get_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def all_ranks(self, ok: bool) -> bool:
        """True when `ok` holds on every rank (no collective for a single process: it runs every micro-step)."""
        if self.world == 1:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def save_checkpoint(self) -> None:
        """DeepSpeed checkpoint plus every rank's RNG state, complete or absent (fairhpc/runstate.py)."""
        ckpt_dir = self.run.checkpoints
        tag = runstate.partial_name(self.global_step)
        state = {"global_step": self.global_step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch,
                 **self._rng_state()}
        error = None
        try:
            self.engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
            # DeepSpeed stores the client state of rank 0 only (ZeRO 0-2): each rank keeps its own RNG
            torch.save(self._rng_state(), ckpt_dir / tag / f"rng_rank{self.rank}.pt")
        except (OSError, RuntimeError) as e:
            error = runstate.describe_write_error(e, ckpt_dir / tag)
        if not self.all_ranks(error is None):
            if self.is_main:
                shutil.rmtree(ckpt_dir / tag, ignore_errors=True)  # `latest` still names the last good one
            raise CheckpointError(error or f"writing {ckpt_dir / tag} failed on another rank")
        if self.is_main:
            runstate.finish_checkpoint(ckpt_dir, self.global_step, self.cfg.train.keep_checkpoints)
        dist.barrier()

    def _resume(self) -> None:
        """Load the newest complete checkpoint that every rank can read; name any skipped one."""
        ckpt_dir = self.run.checkpoints
        candidates = runstate.complete_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
        names = [p.name for p in candidates]
        dist.broadcast_object_list(names, src=0)  # rank 0's listing decides the order
        state = None
        for name in names:
            error = None
            try:
                path, state = self.engine.load_checkpoint(str(ckpt_dir), tag=name)
                if path is None or not state:
                    error = "DeepSpeed found no loadable checkpoint files"
            except Exception as e:  # noqa: BLE001 - any unreadable file: fall back to an older one
                error = f"{type(e).__name__}: {e}"
            if self.all_ranks(error is None):
                break
            state = None
            print(f"[fairhpc] --resume: checkpoint {ckpt_dir / name} is unreadable on rank {self.rank} "
                  f"({error or 'on another rank'}); trying an older one", flush=True)
        if state is None:
            if names:
                raise CheckpointError(f"--resume: none of the checkpoints in {ckpt_dir} can be read "
                                      f"({', '.join(names)}); move the folder away to start fresh")
            if self.is_main:
                print(f"[fairhpc] --resume: no checkpoint in {ckpt_dir}, starting fresh", flush=True)
            return
        self.global_step, self.epoch = state["global_step"], state["epoch"]
        self.micro_in_epoch = state["micro_in_epoch"]
        own = ckpt_dir / name / f"rng_rank{self.rank}.pt"
        self._set_rng_state(torch.load(own, weights_only=False) if own.exists() else state)
        if self.is_main:
            # drop metric lines written after the checkpoint by the interrupted run
            kept = [r for r in read_jsonl(self.run.metrics) if r.get("step", 0) <= self.global_step]
            atomic_write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in kept))
            print(f"[fairhpc] resumed from {name} in {ckpt_dir} (step {self.global_step})", flush=True)

    # ---------------------------------------------------------------------------------- signals
    def _on_signal(self, signum, frame):
        self._stop = True
        if self.is_main:
            print(f"[fairhpc] signal {signum}: checkpoint at the end of this optimizer step", flush=True)

    def _stop_requested(self) -> bool:
        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank must agree to save
        return bool(flag.item())

    def _grad_norm_stage0(self):
        """Pre-clipping gradient norm; ZeRO >= 1 engines report it themselves, stage 0 does not."""
        if self.cfg.train.zero_stage != 0:
            return None
        norms = [p.grad.detach().float().norm() for p in self.engine.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else None

    # ---------------------------------------------------------------------------------- the loop
    def _log(self, rec: dict) -> None:
        if self.is_main:
            append_jsonl(self.run.metrics, rec)
            self.trackers.log_metrics(rec)

    def _log_eval(self) -> dict | None:
        ev = self.evaluate()
        if ev is not None:
            self._log({"split": "eval", "step": self.global_step, "epoch": self.epoch, **ev})
        return ev

    def _check_finite(self, loss: torch.Tensor) -> None:
        """Stop every rank together when a micro-batch's loss is NaN or infinite (before its backward)."""
        if self.all_ranks(bool(torch.isfinite(loss.detach()).all())):
            return
        hint = self.task.nonfinite_hint()
        raise NonFiniteError(f"the loss is not finite at optimizer step {self.global_step + 1} (micro-batch "
                             f"{self.micro_in_epoch + 1} of epoch {self.epoch}); nothing of this step was written. "
                             + (hint or "Lower train.lr or check the data (docs/method.md)"))

    def _final_eval(self) -> dict | None:
        """The held-out evaluation at the last step: reused when a resumed, finished run already logged it."""
        found = [None]
        if self.is_main:
            done = [r for r in read_jsonl(self.run.metrics) if r.get("split") == "eval"
                    and r.get("step") == self.global_step]
            found[0] = done[-1] if done else None
        dist.broadcast_object_list(found, src=0)
        if found[0] is None:
            return self._log_eval()
        return {k: v for k, v in found[0].items() if k not in ("split", "step", "epoch")}

    def train(self) -> dict:
        from tqdm.auto import tqdm

        t = self.cfg.train
        keys = self.task.metric_keys
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        start = time.time()
        bar = tqdm(total=self.total_steps, initial=self.global_step, disable=not self.is_main,
                   desc=self.task.progress_label, dynamic_ncols=True)
        if self.global_step == 0 and self.eval_ds is not None:
            self._log_eval()
        acc = dict.fromkeys(keys, 0.0)
        n_micro = 0
        done = self.global_step >= self.total_steps
        while not done:
            self.sampler.set_epoch(self.epoch, skip=self.micro_in_epoch * t.micro_batch_size)
            batches = iter(self.loader)
            # one optimizer step = grad_accum micro-batches; the task sees them all first (begin_step)
            while len(step_batches := list(itertools.islice(batches, t.grad_accum))) == t.grad_accum:
                self.task.begin_step(self, self.engine, step_batches)
                for batch in step_batches:
                    loss, metrics = self.task.loss(self, self.engine, batch)
                    self._check_finite(loss)
                    boundary = self.engine.is_gradient_accumulation_boundary()
                    self.engine.backward(loss)
                    pre_clip_norm = self._grad_norm_stage0() if boundary else None
                    self.engine.step()
                    self.micro_in_epoch += 1
                    for k in keys:
                        acc[k] += float(metrics[k])
                    n_micro += 1
                assert boundary, "DeepSpeed's accumulation boundary must close every group of grad_accum"
                self.global_step += 1
                bar.update(1)
                gn = self.engine.get_global_grad_norm()
                gn = pre_clip_norm if gn is None else gn
                if gn is not None and not math.isfinite(float(gn)) and self.precision != "fp16":
                    raise NonFiniteError(f"the gradient norm is {float(gn)} at optimizer step {self.global_step}; "
                                         "nothing of this step was written. Lower train.lr or check the data")
                if self.global_step % t.log_steps == 0 or self.global_step == self.total_steps:
                    vals = torch.tensor([acc[k] / n_micro for k in keys], device=self.device)
                    dist.all_reduce(vals)  # mean over ranks (identical under global scope)
                    vals = (vals / self.world).tolist()
                    rec = {"split": "train", "step": self.global_step,
                           "epoch": self.epoch + self.micro_in_epoch / max(1, self.micro_per_epoch),
                           "samples": self.global_step * t.micro_batch_size * t.grad_accum * self.world,
                           **dict(zip(keys, vals)),
                           "lr": self.engine.get_lr()[0],
                           "grad_norm": float(gn) if gn is not None else None,
                           "time": time.time() - start}
                    self._log(rec)
                    bar.set_postfix({k: f"{rec[k]:.4f}" for k in self.task.progress_keys})
                acc = dict.fromkeys(keys, 0.0)
                n_micro = 0
                done = self.global_step >= self.total_steps
                if t.eval_steps and self.global_step % t.eval_steps == 0 and not done:
                    self._log_eval()
                epoch_end = not done and self.micro_in_epoch >= self.micro_used_per_epoch
                if epoch_end:  # before a checkpoint, so that a resume starts the next epoch
                    self.epoch += 1
                    self.micro_in_epoch = 0
                stop = self._stop_requested()
                if (t.save_steps and self.global_step % t.save_steps == 0 and not done) or stop:
                    self.save_checkpoint()
                if stop:
                    bar.close()
                    raise Preempted(f"stopped by signal at step {self.global_step}; rerun with --resume")
                if done or epoch_end:
                    break
            else:  # the data ran out before a full step (not with the epoch rule above; kept as a guard)
                self.epoch += 1
                self.micro_in_epoch = 0
        bar.close()
        saved = [False]  # a resumed, finished run already has its last checkpoint (rank 0 decides)
        if self.is_main and self.run.checkpoints.is_dir():
            newest = runstate.complete_checkpoints(self.run.checkpoints)
            saved[0] = bool(newest) and runstate.step_of(newest[0]) == self.global_step
        dist.broadcast_object_list(saved, src=0)
        if not saved[0]:
            self.save_checkpoint()
        ev = self._final_eval()
        self.save_final()
        self.task.finish(self)
        summary = {"task": self.cfg.task, **self.task.summary_fields(),
                   "seed": self.cfg.seed, "steps": self.global_step, "world_size": self.world,
                   "zero_stage": t.zero_stage, "precision": self.precision, **self.task.summary_impl(),
                   "train_time_s": time.time() - start, "eval": ev, "final_model": str(self.run.final)}
        if self.is_main:
            atomic_write_json(self.run.summary, summary)
            self.trackers.log_summary("summary", self.global_step, summary)
            if self.then_eval is not None and getattr(self.then_eval, "out", None):
                self.trackers.log_eval_dir(self.then_eval.out, self.global_step)
            self.trackers.close()
        dist.barrier()
        return summary

    def save_final(self) -> None:
        """save_pretrained (safetensors) + tokenizer into output_dir/final, written atomically."""
        if self.cfg.train.zero_stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
        else:
            state = self.engine.module.state_dict()
        if self.is_main:
            final = self.run.final
            tmp = final.with_name(final.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        dist.barrier()


def train(cfg: RunConfig, resume: bool = False, on_mismatch: str = "error", overwrite: bool = False,
          then_eval: list[str] | None = None) -> dict:
    engine = Engine(cfg, resume=resume, on_mismatch=on_mismatch, overwrite=overwrite, then_eval=then_eval)
    try:
        return engine.train()
    finally:
        engine.trackers.close()  # also after a signal or a failure: what was logged is flushed
