"""ArmoRM stage 1a: hidden states of the frozen backbone, computed in shards (``fairhpc armo-embed``).

Every item (a rated response, or the chosen / rejected response of a pair; order: :meth:`Inputs.items`) is
rendered with the tokenizer's chat template as prompt + one assistant turn and run through the backbone
(``AutoModel``: the transformer without any head; a tiny backbone is a random Llama of ``model.tiny`` with
seed ``armo.backbone_seed``, saved once under OUT/backbone).  Two states are kept per item, from one forward:

  response   the final-layer state at the last token (the end of the assistant turn): what the regression reads
  prompt     the final-layer state at the last token of the prompt with the generation prompt (the assistant
             header), i.e. the state of the prompt alone under causal attention: what the gate reads

A sequence longer than ``armo.max_length`` loses its oldest tokens (a leading bos is kept); when that cuts
the prompt's end away, the prompt state comes from a forward of the prompt alone.

Shards: the N shards split the items into contiguous ranges; shard i is OUT/shards/shard-{i}-of-{N}.safetensors
(5-digit numbers), written atomically (temporary file + rename) with the fingerprint of its inputs (the
items' texts, the backbone, max_length, store dtype) in its metadata.  A shard whose file exists with the
current fingerprint is not computed again, so a killed job or array task resumes shard by shard.  The gather
step checks that all N shards carry the current fingerprint and writes OUT/embeddings.safetensors (tensors per
split, below) and OUT/embeddings.json (what the file holds).

  ratings_<split>.response / .prompt [n, H]   ratings_<split>.ratings [n, K] (NaN = missing)   .length [n]
  pairs_<split>.chosen / .rejected / .prompt [n, H]   .category [n] (-1 = none)   .length_chosen / _rejected [n]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from fairhpc.errors import DataError

SHARD_DIR = "shards"
BACKBONE_DIR = "backbone"
EMBEDDINGS = "embeddings.safetensors"
EMBEDDINGS_INFO = "embeddings.json"
META_KEY = "fairhpc_armo"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.safetensors"


def shard_range(n_items: int, i: int, n: int) -> tuple[int, int]:
    return n_items * i // n, n_items * (i + 1) // n


# ------------------------------------------------------------------------------------------ the backbone
def backbone_ident(run_cfg) -> dict:
    """What identifies the backbone's weights: its name or path, and for tiny its shape and seed."""
    m = run_cfg.model
    ident = {"name_or_path": m.name_or_path, "tokenizer": m.tokenizer}
    if m.name_or_path == "tiny":
        ident.update(tiny=dataclasses.asdict(m.tiny), seed=run_cfg.armo.backbone_seed)
    return ident


def _save_dir_atomically(build, target: Path) -> None:
    """Write a directory with ``build(tmp)`` and rename it into place; another writer's copy wins a race."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_backbone(run_cfg, out_dir: Path | None, device, dtype=None):
    """(backbone module in eval mode on ``device``, tokenizer, reference) for the embed stage.

    A tiny backbone is built from ``model.tiny`` with seed ``armo.backbone_seed`` and saved (with its tokenizer)
    under OUT/backbone the first time, then loaded from there; the reference is that directory.  Any other
    backbone loads with ``AutoModel.from_pretrained(model.name_or_path)``; the reference is that name."""
    from transformers import AutoModel

    from fairhpc.tokenizer import load_tokenizer

    m = run_cfg.model
    tok = load_tokenizer(m)
    if m.name_or_path == "tiny":
        if out_dir is None:
            raise ValueError("a tiny backbone needs the embeddings directory to live in")
        path = Path(out_dir) / BACKBONE_DIR
        if not (path / "config.json").is_file():
            from transformers import LlamaModel

            from fairhpc.models import _tiny_llama_config

            def build(tmp):
                state = torch.random.get_rng_state()
                torch.manual_seed(run_cfg.armo.backbone_seed)
                model = LlamaModel(_tiny_llama_config(m.tiny, tok))
                torch.random.set_rng_state(state)
                model.save_pretrained(tmp, safe_serialization=True)
                tok.save_pretrained(tmp)
                (Path(tmp) / "fairhpc_backbone.json").write_text(json.dumps(backbone_ident(run_cfg)) + "\n")

            path.parent.mkdir(parents=True, exist_ok=True)
            _save_dir_atomically(build, path)
        model = AutoModel.from_pretrained(path, torch_dtype=torch.float32)
        ref = str(path.resolve())
    else:
        model = AutoModel.from_pretrained(m.name_or_path, torch_dtype=dtype)
        ref = m.name_or_path
    model.requires_grad_(False)
    return model.to(device).eval(), tok, ref


# ------------------------------------------------------------------------------------------ encoding
def encode(tokenizer, prompt: list[dict], response: str, max_length: int) -> tuple[list[int], int, list[int], int]:
    """(ids of prompt + response, position of the prompt's last token in them or -1 when cut away,
    prompt ids for a separate forward, response tokens before truncation).

    The conversation is tokenized as one text (as the backbone saw it in training); the prompt's last token is
    the last one that starts inside the rendered prompt with its generation prompt (character offsets)."""
    from fairhpc.data import _adds_bos, render_messages

    p_text = render_messages(tokenizer, prompt, add_generation_prompt=True)
    full = render_messages(tokenizer, list(prompt) + [{"role": "assistant", "content": response}])
    k = len(p_text) if full.startswith(p_text) else len(os.path.commonprefix([p_text, full]))
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, starts = list(enc["input_ids"]), [s for s, _ in enc["offset_mapping"]]
        n_prompt = sum(1 for s in starts if s < k)
    else:  # no offsets: prompt and response tokenized apart
        p_ids, r_ids = (list(x) for x in tokenizer([p_text, full[k:]], add_special_tokens=False)["input_ids"])
        ids, n_prompt = p_ids + r_ids, len(p_ids)
    if _adds_bos(tokenizer) and ids[:1] != [bos]:
        ids.insert(0, bos)
        n_prompt += 1
    n_prompt = max(n_prompt, 1)
    p_ids = ids[:n_prompt]
    n_resp = len(ids) - n_prompt
    cut = max(0, len(ids) - max_length)
    keep_bos = bos is not None and ids[:1] == [bos]
    if cut:
        ids = ids[:1] + ids[1 + cut:] if keep_bos else ids[cut:]
    end = n_prompt - 1 - cut
    if cut and end < (1 if keep_bos else 0):
        end = -1
    prompt_only = p_ids[:1] + p_ids[len(p_ids) - max_length + 1:] if len(p_ids) > max_length and keep_bos \
        else p_ids[-max_length:]
    return ids, end, prompt_only, n_resp


@torch.no_grad()
def _states(model, seqs: list[list[int]], positions: list[list[int]], pad_id: int, batch_size: int, device,
            desc: str | None = None) -> list[torch.Tensor]:
    """[len(positions[i]), H] final-layer states of each sequence at the given positions (float32, CPU)."""
    from tqdm.auto import tqdm

    out: list = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]), reverse=True)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, desc=desc, unit="batch", disable=desc is None or len(starts) < 4):
        idx = order[s:s + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(seqs[i])] = torch.as_tensor(seqs[i])
            mask[row, :len(seqs[i])] = 1
        hs = model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        for row, i in enumerate(idx):
            out[i] = hs[row, positions[i]].float().cpu()
    return out


def embed_texts(model, tokenizer, prompts, responses, max_length: int, batch_size: int, device,
                desc: str | None = None) -> dict:
    """{"response": [n, H], "prompt": [n, H], "length": [n]} of (prompt, response) pairs (float32, CPU)."""
    enc = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    states = _states(model, [e[0] for e in enc], [[len(e[0]) - 1, max(e[1], 0)] for e in enc], pad, batch_size,
                     device, desc)
    resp = torch.stack([s[0] for s in states]) if states else torch.empty(0)
    prompt = torch.stack([s[1] for s in states]) if states else torch.empty(0)
    cut = [i for i, e in enumerate(enc) if e[1] < 0]
    if cut:
        alone = _states(model, [enc[i][2] for i in cut], [[len(enc[i][2]) - 1] for i in cut], pad, batch_size,
                        device)
        for i, s in zip(cut, alone):
            prompt[i] = s[0]
    return {"response": resp, "prompt": prompt, "length": torch.tensor([e[3] for e in enc], dtype=torch.long)}


# ------------------------------------------------------------------------------------------ shards
def fingerprint(run_cfg, items) -> str:
    from fairhpc.armo.data import items_digest

    a = run_cfg.armo
    doc = {"items": items_digest(items), "n": len(items), "backbone": backbone_ident(run_cfg), "encoding": 1,
           "max_length": a.max_length, "store_dtype": a.store_dtype}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def read_meta(path: Path) -> dict | None:
    """The metadata of a shard or embeddings file, None when the file is absent or unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get(META_KEY, "null"))
    except Exception:  # noqa: BLE001 - a torn or foreign file counts as absent
        return None


def save_tensors(path: Path, tensors: dict, meta: dict) -> None:
    """safetensors file written atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Embedder:
    """The embed stage of one run config and output directory (data validated on construction)."""

    def __init__(self, run_cfg, out_dir, device="cpu"):
        from fairhpc.armo.data import load_inputs

        self.cfg, self.out = run_cfg, Path(out_dir)
        self.inputs = load_inputs(run_cfg)          # every bad row fails here, before any compute
        self.items = self.inputs.items()
        self.fp = fingerprint(run_cfg, self.items)
        self.device = device
        self._model = None

    def shard_path(self, i: int, n: int) -> Path:
        return self.out / SHARD_DIR / shard_name(i, n)

    def shard_done(self, i: int, n: int) -> bool:
        meta = read_meta(self.shard_path(i, n))
        return meta is not None and meta.get("fingerprint") == self.fp and \
            (meta.get("start"), meta.get("stop")) == shard_range(len(self.items), i, n)

    def model(self):
        if self._model is None:
            dtype = torch.bfloat16 if torch.device(self.device).type == "cuda" else None
            self._model = load_backbone(self.cfg, self.out, self.device, dtype)
        return self._model

    def run_shard(self, i: int, n: int) -> str:
        """Compute shard i of n unless it is done; returns "skipped" or "computed"."""
        if not 0 <= i < n:
            from fairhpc.errors import ConfigError

            raise ConfigError(f"--shard {i}: must be in [0, {n - 1}] for --num-shards {n}")
        if self.shard_done(i, n):
            print(f"[armo-embed] shard {i + 1}/{n}: done before (fingerprint matches), skipped", flush=True)
            return "skipped"
        start, stop = shard_range(len(self.items), i, n)
        t0 = time.time()
        model, tok, ref = self.model()
        chunk = self.items[start:stop]
        a = self.cfg.armo
        st = embed_texts(model, tok, [it[3] for it in chunk], [it[4] for it in chunk], a.max_length, a.batch_size,
                         self.device, desc=f"shard {i + 1}/{n}")
        dt = DTYPES[a.store_dtype]
        h = model.config.hidden_size
        tensors = {"response": st["response"].to(dt).reshape(-1, h), "prompt": st["prompt"].to(dt).reshape(-1, h),
                   "length": st["length"]}
        save_tensors(self.shard_path(i, n), tensors, {"fingerprint": self.fp, "start": start, "stop": stop,
                                                      "num_shards": n, "hidden_size": h, "backbone": ref})
        print(f"[armo-embed] shard {i + 1}/{n}: {stop - start} items in {time.time() - t0:.1f} s -> "
              f"{self.shard_path(i, n)}", flush=True)
        return "computed"

    def gather(self, n: int) -> Path:
        """OUT/embeddings.safetensors + OUT/embeddings.json from the n shards (all must carry the fingerprint)."""
        from fairhpc.armo.data import PAIR_SPLITS, RATING_SPLITS
        from fairhpc.io import atomic_write_json

        missing = [i for i in range(n) if not self.shard_done(i, n)]
        if missing:
            raise DataError(f"{self.out / SHARD_DIR}: shards {', '.join(map(str, missing))} of {n} are missing or "
                            "were made from other inputs (data, backbone, armo.max_length or armo.store_dtype); "
                            f"run `fairhpc armo-embed --shard I --num-shards {n}` for them first")
        from safetensors.torch import load_file

        parts = [load_file(str(self.shard_path(i, n))) for i in range(n)]
        metas = [read_meta(self.shard_path(i, n)) for i in range(n)]
        resp = torch.cat([p["response"] for p in parts])
        prompt = torch.cat([p["prompt"] for p in parts])
        length = torch.cat([p["length"] for p in parts])
        rows: dict = {}
        for k, (split, i, part, _, _) in enumerate(self.items):
            rows.setdefault(split, {}).setdefault(part, []).append(k)
        cats = self.inputs.categories()
        cat_id = {c: j for j, c in enumerate(cats)}
        out: dict = {}
        counts = {}
        for split in RATING_SPLITS:
            if split not in self.inputs.ratings:
                continue
            idx = torch.tensor(rows[split]["response"])
            out[f"{split}.response"], out[f"{split}.prompt"] = resp[idx], prompt[idx]
            out[f"{split}.length"] = length[idx]
            out[f"{split}.ratings"] = torch.tensor([r.ratings for r in self.inputs.ratings[split]],
                                                   dtype=torch.float32)
            counts[split] = len(idx)
        for split in PAIR_SPLITS:
            if split not in self.inputs.pairs:
                continue
            ci, ri = torch.tensor(rows[split]["chosen"]), torch.tensor(rows[split]["rejected"])
            out[f"{split}.chosen"], out[f"{split}.rejected"] = resp[ci], resp[ri]
            out[f"{split}.prompt"] = prompt[ci]
            out[f"{split}.length_chosen"], out[f"{split}.length_rejected"] = length[ci], length[ri]
            out[f"{split}.category"] = torch.tensor([cat_id.get(ex.category, -1) for ex in self.inputs.pairs[split]],
                                                    dtype=torch.long)
            counts[split] = len(ci)
        ref = metas[0]["backbone"]
        info = {"fingerprint": self.fp, "objectives": self.inputs.objectives, "categories": cats,
                "backbone": backbone_ident(self.cfg),
                "backbone_ref": BACKBONE_DIR if self.cfg.model.name_or_path == "tiny" else ref,
                "hidden_size": metas[0]["hidden_size"], "max_length": self.cfg.armo.max_length,
                "store_dtype": self.cfg.armo.store_dtype, "sources": self.inputs.sources, "counts": counts,
                "num_shards": n}
        path = self.out / EMBEDDINGS
        save_tensors(path, out, info)
        atomic_write_json(self.out / EMBEDDINGS_INFO, info)
        print(f"[armo-embed] gathered {n} shards -> {path} ({', '.join(f'{k} {v}' for k, v in counts.items())})",
              flush=True)
        return path


def load_embeddings(path, key: str = "armo.embeddings") -> tuple[dict, dict]:
    """(tensors as float32 where floating, info) of a gathered embeddings file; ConfigError naming ``key``."""
    from safetensors.torch import load_file

    from fairhpc.errors import ConfigError

    p = Path(str(path))
    if not str(path):
        raise ConfigError(f"{key}: not set; give the embeddings file of `fairhpc armo-embed` "
                          f"(DIR/{EMBEDDINGS})")
    if not p.is_file():
        raise ConfigError(f"{key}: {path}: no such file (made by `fairhpc armo-embed`, DIR/{EMBEDDINGS})")
    info = read_meta(p)
    if not info or "objectives" not in info:
        raise ConfigError(f"{key}: {path}: not a gathered ArmoRM embeddings file (no {META_KEY} metadata)")
    tensors = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(p)).items()}
    info["dir"] = str(p.parent.resolve())
    return tensors, info
