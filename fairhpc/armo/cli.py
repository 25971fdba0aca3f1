"""``fairhpc armo-embed`` and ``fairhpc armo-regress`` (ArmoRM's first two stages; the gate is
``fairhpc train-armo``).  docs/armo.md."""

from __future__ import annotations

from pathlib import Path

from fairhpc.errors import ConfigError


def _load(args):
    from fairhpc.config import check_model_path, load_config

    cfg = load_config(args.config, args.overrides, task="armo")
    check_model_path("model.name_or_path", cfg.model.name_or_path)
    check_model_path("model.tokenizer", cfg.model.tokenizer, need_config=False)
    return cfg


def _embed_out(args, cfg) -> Path:
    if args.out:
        return Path(args.out)
    if cfg.armo.embeddings:
        return Path(cfg.armo.embeddings).parent
    raise ConfigError("--out: not given and armo.embeddings is not set; name the embeddings directory")


def cmd_embed(args) -> int:
    from fairhpc.armo.embed import Embedder

    cfg = _load(args)
    n = args.num_shards if args.num_shards is not None else cfg.armo.num_shards
    if n < 1:
        raise ConfigError(f"--num-shards {n}: must be >= 1")
    if args.shard is not None and args.gather:
        raise ConfigError("--shard and --gather: give one (a shard job, or the gather step)")
    if args.shard is not None and not 0 <= args.shard < n:
        raise ConfigError(f"--shard {args.shard}: must be in [0, {n - 1}] for --num-shards {n}")
    out = _embed_out(args, cfg)
    from fairhpc.rewards.base import resolve_device

    emb = Embedder(cfg, out, resolve_device(args.device))   # reads and validates every input first
    print(f"[armo-embed] {len(emb.items)} items ({', '.join(f'{k} {len(v)}' for k, v in emb.inputs.ratings.items())}"
          f", {', '.join(f'{k} {len(v)} pairs' for k, v in emb.inputs.pairs.items())}); objectives "
          f"{', '.join(emb.inputs.objectives)}; {n} shards in {out}", flush=True)
    if args.shard is not None:
        emb.run_shard(args.shard, n)
        return 0
    if not args.gather:
        done = [emb.run_shard(i, n) for i in range(n)]
        print(f"[armo-embed] {done.count('computed')} shards computed, {done.count('skipped')} done before",
              flush=True)
    emb.gather(n)
    return 0


def cmd_regress(args) -> int:
    from fairhpc.armo.regress import run_regress

    cfg = _load(args)
    embeddings = args.embeddings or cfg.armo.embeddings
    if not embeddings:
        raise ConfigError("--embeddings: not given and armo.embeddings is not set")
    run_regress(cfg, embeddings, args.out)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("armo-embed", help="ArmoRM stage 1a: backbone states of rated responses and pairs, in shards",
                       description="Run the frozen backbone (model.name_or_path) over the rated responses "
                                   "(armo.ratings_train / armo.ratings_eval) and the preference pairs (data.train / "
                                   "data.eval), keeping the last-token state and the prompt-end state. "
                                   "--shard I computes one shard (a SLURM array task); --gather joins them into "
                                   "OUT/embeddings.safetensors; neither: every shard not done before, then the "
                                   "gather. docs/armo.md")
    p.add_argument("--config", help="YAML run config (task armo)")
    p.add_argument("--out", help="embeddings directory (default: the folder of armo.embeddings)")
    p.add_argument("--shard", type=int, default=None, metavar="I", help="compute shard I only (0-based)")
    p.add_argument("--num-shards", type=int, default=None, metavar="N", help="shards (default armo.num_shards)")
    p.add_argument("--gather", action="store_true", help="only gather the N finished shards")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("armo-regress", help="ArmoRM stage 1b: ridge regression from states to absolute ratings",
                       description="Fit one ridge regression per objective (alpha chosen on a validation split "
                                   "of ratings_train) and report held-out R^2; writes OUT/regression.safetensors, "
                                   "OUT/metrics.json and OUT/regression.png. docs/armo.md")
    p.add_argument("--config", help="YAML run config (task armo)")
    p.add_argument("--embeddings", help="gathered embeddings file (default armo.embeddings)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_regress)
