"""Compute nodes without internet: everything a workflow config names on the Hugging Face hub, fetched into one
shared cache before the jobs run, and the jobs run offline.

Workflow config (schemas/config.schema.yaml, ``hub``)::

    hub:
      cache: /shared/hf           # HF_HOME of every job (a shared filesystem); null = each user's default
      offline: true               # training / evaluation jobs run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
      fetch: true                 # rule fetch_hub downloads what the grids name (on the submit host) first;
                                  # false: nothing is downloaded, and a missing item fails the DAG, named
      revisions: {RLHFlow/LLaMA3-SFT: 2a1c...}   # pinned revisions (default: the main branch, recorded)

The items are read from the expanded plan (:func:`items`): each run's model, reference model and tokenizer
(resolved through the run config, as the trainer resolves them), its training / held-out data when they are
hub names, the evaluation judges, the bias-benchmark data and the sources of ``prepare`` data sets.  Models
are fetched with ``huggingface_hub.snapshot_download`` (repo type model), data sets as repo type dataset;
``fairhpc fetch-hub`` writes {results}/hub/fetched.json with the commit of every item.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fairhpc.errors import ConfigError
from fairhpc.sources import is_local_path

OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
NOT_HUB = ("tiny", "synthetic")


def is_hub_name(name) -> bool:
    if not isinstance(name, str) or not name or name in NOT_HUB or "{results}" in name:
        return False
    return not is_local_path(name) and "/" in name.strip("/")


def items(plan) -> list[dict]:
    """[{"kind": "model" | "dataset", "name": ..., "used_by": key}] of a plan, sorted, each once."""
    from fairhpc.config import load_config

    found: dict[tuple, str] = {}

    def add(kind, name, where):
        if is_hub_name(name) and not (plan.results and str(name).startswith(plan.results + "/")):
            found.setdefault((kind, name), where)

    for run in plan.runs.values():
        over = [o for o in run.overrides if not o.startswith(("data.train=", "data.eval="))] + \
               [f"data.{k}=synthetic" for k in ("train", "eval")]
        inputs = {k for k, _ in run.inputs}
        over = [o for o in over if o.split("=", 1)[0] not in inputs]
        cfg = load_config(Path(plan.repo) / run.base_config, over, task=run.task)
        m = cfg.model
        for key in ("name_or_path", "ref_name_or_path", "tokenizer"):
            add("model", getattr(m, key), f"{run.dir}: model.{key}")
        for o in run.overrides:
            k, _, v = o.partition("=")
            if k in ("data.train", "data.eval"):
                add("dataset", v, f"{run.dir}: {k}")
        if run.eval["enabled"]:
            for key in ("reward_model", "reference"):
                add("model", run.eval.get(key), f"{run.dir}: eval.{key}")
        for b in run.eval["benchmarks"]:
            for d in b["data"]:
                add("dataset", d, f"{run.dir}: eval.benchmarks {b['name']}")
        if run.task == "armo":  # the rated responses of the regression (the embed stage reads them too)
            for key in ("ratings_train", "ratings_eval"):
                add("dataset", getattr(cfg.armo, key), f"{run.dir}: armo.{key}")
        if run.task == "pg":  # the reward classifier
            add("model", cfg.pg.reward_model, f"{run.dir}: pg.reward_model")
    rlchf = plan.config.get("rlchf") or {}
    add("model", (rlchf.get("judge") or {}).get("model"), "rlchf.judge.model")
    add("model", (rlchf.get("candidates") or {}).get("policy"), "rlchf.candidates.policy")
    for name, ds in plan.config["datasets"].items():
        for split, parts in (ds.get("prepare") or {}).items():
            for p in parts:
                add("dataset", p["source"], f"datasets.{name}.prepare.{split}")
    for n, loop in enumerate(plan.config.get("online") or []):  # online DPO / RAFT loops (rules/online.smk)
        where = f"online[{n}] ({loop['name']})"
        for key in ("policy", "reward_model"):
            add("model", loop.get(key), f"{where}.{key}")
        prompts = loop.get("prompts") or {}
        train = prompts.get("train")
        for src in (train if isinstance(train, list) else [train]) + [prompts.get("eval")]:
            add("dataset", src, f"{where}.prompts")
    return [{"kind": k, "name": n, "used_by": w} for (k, n), w in sorted(found.items())]


def hub_cache_dir(cache: str | None) -> Path | None:
    return None if cache is None else Path(cache) / "hub"


def cached_revision(item: dict, cache: str | None, revision: str | None = None) -> str | None:
    """The commit of `item` in the cache (None when it is not there), without any network access."""
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(item["name"], repo_type=item["kind"], revision=revision,
                                 cache_dir=hub_cache_dir(cache), local_files_only=True)
    except Exception:  # noqa: BLE001 - every 'not in the cache' error of huggingface_hub
        return None
    return Path(path).name


def check_cached(found: list[dict], cache: str | None, revisions: dict) -> None:
    """Refuse (naming every missing item and the key that uses it) unless all items are in the cache."""
    missing = [it for it in found if cached_revision(it, cache, revisions.get(it["name"])) is None]
    if missing:
        where = cache or "the default Hugging Face cache"
        lines = [f"  {it['kind']} {it['name']}" + (f" @ {revisions[it['name']]}" if it["name"] in revisions else "")
                 + f" (used by {it['used_by']})" for it in missing]
        raise ConfigError(
            f"hub: offline jobs need these in the cache {where} and hub.fetch is false:\n" + "\n".join(lines)
            + "\nfetch them on a machine with network access (`fairhpc fetch-hub`, or set hub.fetch: true)")


def job_env(hub: dict) -> str:
    """Shell prefix of a job that reads the hub: the shared cache and offline mode."""
    parts = []
    if hub.get("cache"):
        parts.append(f"HF_HOME={hub['cache']}")
    if hub.get("offline"):
        parts += [f"{v}=1" for v in OFFLINE_ENV]
    return f"export {' '.join(parts)}; " if parts else ""


def fetch(found: list[dict], cache: str | None, revisions: dict, out: str | os.PathLike) -> dict:
    """Download every item (a no-op for those already cached) and write `out` with their commits."""
    from huggingface_hub import snapshot_download
    from tqdm import tqdm

    from fairhpc.io import atomic_write_text

    record = []
    for it in tqdm(found, desc="fetch", unit="item"):
        try:
            path = snapshot_download(it["name"], repo_type=it["kind"], revision=revisions.get(it["name"]),
                                     cache_dir=hub_cache_dir(cache))
        except Exception as e:  # noqa: BLE001 - name the item, keep the library's reason
            raise ConfigError(f"hub: cannot fetch {it['kind']} {it['name']} (used by {it['used_by']}): {e}") from None
        record.append({**it, "revision": Path(path).name})
    summary = {"cache": cache, "items": record}
    atomic_write_text(out, json.dumps(summary, indent=1) + "\n")
    return summary


HUB_KINDS = ("model", "dataset")


def _json_arg(option: str, text: str, kind: type, what: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option}: invalid JSON ({e.msg} at column {e.colno}); expected {what}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{option}: expected {what}, got {type(value).__name__}")
    return value


def check_items(found: list) -> None:
    """Refuse an item that is not {"kind": "model"|"dataset", "name": str, ...} (naming its index and field)."""
    for i, it in enumerate(found):
        if not isinstance(it, dict):
            raise ConfigError(f"--items[{i}]: expected an object {{kind, name, used_by}}, got {it!r:.60}")
        if it.get("kind") not in HUB_KINDS:
            raise ConfigError(f"--items[{i}]: field 'kind': {it.get('kind')!r} is not one of {', '.join(HUB_KINDS)}")
        if not isinstance(it.get("name"), str) or not it["name"]:
            raise ConfigError(f"--items[{i}]: field 'name': expected a hub name, got {it.get('name')!r}")
        it.setdefault("used_by", "--items")


def _cmd(args) -> int:
    found = _json_arg("--items", args.items, list, 'a JSON list of {"kind": "model"|"dataset", "name": ...}')
    check_items(found)
    revisions = _json_arg("--revisions", args.revisions, dict, "a JSON mapping name -> revision")
    if args.out is not None and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a directory; give the fetched.json file to write")
    if args.check_only:
        check_cached(found, args.cache, revisions)
        print(f"all {len(found)} items are in the cache")
        return 0
    s = fetch(found, args.cache, revisions, args.out)
    for it in s["items"]:
        print(f"{it['kind']:8s} {it['name']} @ {it['revision']}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("fetch-hub", help="download the models and data sets a workflow names into a shared cache",
                       description="Download hub models and data sets (huggingface_hub.snapshot_download) into "
                                   "CACHE/hub and record their commits; the workflow's rule fetch_hub runs it "
                                   "with the items of the expanded grid (fairhpc.hub.items).")
    p.add_argument("--items", required=True, help='JSON list of {"kind": "model"|"dataset", "name": ..., "used_by": ...}')
    p.add_argument("--cache", default=None, help="HF_HOME of the jobs (default: the user's cache)")
    p.add_argument("--revisions", default="{}", help="JSON mapping name -> pinned revision")
    p.add_argument("--out", default=None, help="fetched.json to write")
    p.add_argument("--check-only", action="store_true", help="download nothing; fail naming what is not cached")
    p.set_defaults(func=_cmd)
