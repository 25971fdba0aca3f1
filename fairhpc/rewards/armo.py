"""ArmoRM (kind armo): its gate, the assembled reward model and its scorer.

Scoring one (prompt, response) with backbone states p (prompt end) and z (response end), regression W, b:

    r        = W z + b                                  K objective scores (the rating scale)
    r'_k     = r_k - lambda_k * r_v                     verbosity-decorrelated (v = armo.verbosity; lambda_v = 1,
                                                        so r'_v = 0: verbosity itself gets no weight)
    g        = softmax(MLP(p) / temperature)           gate weights over the K objectives
    score    = s * sum_k g_k r'_k                       s: the learned scale (ArmoRM's logit_scale)

lambda_k (:func:`verbosity_penalties`, ArmoRM's rule): the smallest candidate of ``armo.penalties`` (tried in
increasing order) for which the Spearman correlation of r_k - lambda_k r_v with r_v on the reference responses
is <= ``armo.corr_threshold``; an objective that no candidate brings there keeps lambda_k = 1 and is listed
as not decorrelated.

A trained model directory (RUN/final) holds armo_gate.safetensors (the MLP, the scale, W, b and lambda),
armo_gate.json, the tokenizer, regression.safetensors (a copy of the input), backbone/ for a tiny backbone,
and fairhpc_model.json ``{"kind": "armo", "backbone": ..., ...}``; :func:`load_armo` loads it as one model,
:class:`ArmoScorer` scores with it.  The pipeline that trains it (embed, regress) is fairhpc/armo/.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fairhpc.rewards.base import PairScores, Scorer, read_marker

GATE_WEIGHTS = "armo_gate.safetensors"
GATE_CONFIG = "armo_gate.json"


# ------------------------------------------------------------------------------------------ decorrelation
def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def verbosity_penalties(r: np.ndarray, v: int, threshold: float, candidates) -> dict:
    """ArmoRM's penalties lambda [K] on reference objective scores r [n, K] (see the module docstring)."""
    k_all = r.shape[1]
    lam = np.ones(k_all)
    before = [spearman(r[:, k], r[:, v]) if k != v else 1.0 for k in range(k_all)]
    after = [0.0] * k_all
    ok = [True] * k_all
    for k in range(k_all):
        if k == v:
            continue
        for c in sorted(candidates):
            corr = spearman(r[:, k] - c * r[:, v], r[:, v])
            if corr <= threshold:
                lam[k], after[k] = c, corr
                break
        else:
            ok[k] = False
            after[k] = spearman(r[:, k] - r[:, v], r[:, v])
    return {"penalties": lam.tolist(), "corr_before": before, "corr_after": after, "decorrelated": ok}


# ------------------------------------------------------------------------------------------ the gate
class ArmoGate(torch.nn.Module):
    """The MLP gate with the fixed regression and penalties as buffers; ``save_pretrained`` /
    ``from_pretrained`` keep everything in two files."""

    def __init__(self, hidden_size: int, names: list[str], gate_hidden: int = 64, gate_layers: int = 2,
                 dropout: float = 0.0, temperature: float = 10.0, logit_scale: float = 1.0, verbosity: int = -1):
        super().__init__()
        k = len(names)
        self.config = {"hidden_size": hidden_size, "names": list(names), "gate_hidden": gate_hidden,
                       "gate_layers": gate_layers, "dropout": dropout, "temperature": temperature,
                       "logit_scale": logit_scale, "verbosity": verbosity}
        dims = [hidden_size] + [gate_hidden] * gate_layers + [k]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.logit_scale = torch.nn.Parameter(torch.tensor([float(logit_scale)]))
        self.register_buffer("reg_weight", torch.zeros(k, hidden_size))
        self.register_buffer("reg_bias", torch.zeros(k))
        self.register_buffer("penalties", torch.zeros(k))

    @property
    def names(self) -> list[str]:
        return self.config["names"]

    def set_regression(self, weight: torch.Tensor, bias: torch.Tensor, penalties) -> None:
        with torch.no_grad():
            self.reg_weight.copy_(weight)
            self.reg_bias.copy_(bias)
            self.penalties.copy_(torch.as_tensor(penalties, dtype=self.penalties.dtype))

    def objectives(self, response: torch.Tensor) -> torch.Tensor:
        return response @ self.reg_weight.T + self.reg_bias

    def decorrelate(self, obj: torch.Tensor) -> torch.Tensor:
        v = self.config["verbosity"]
        return obj if v < 0 else obj - self.penalties * obj[:, v:v + 1]

    def gate(self, prompt: torch.Tensor) -> torch.Tensor:
        x = prompt
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.dropout(F.relu(x), p=self.config["dropout"], training=self.training)
        return F.softmax(x / self.config["temperature"], dim=-1)

    def forward(self, prompt: torch.Tensor, response: torch.Tensor) -> dict:
        obj = self.objectives(response)
        dec = self.decorrelate(obj)
        g = self.gate(prompt)
        return {"score": self.logit_scale[0] * (g * dec).sum(-1), "objectives": obj, "decorrelated": dec, "gate": g}

    def save_pretrained(self, path, state_dict=None, safe_serialization: bool = True) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.state_dict()
        save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, str(path / GATE_WEIGHTS))
        (path / GATE_CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path) -> ArmoGate:
        from safetensors.torch import load_file

        path = Path(path)
        model = cls(**json.loads((path / GATE_CONFIG).read_text()))
        model.load_state_dict(load_file(str(path / GATE_WEIGHTS)))
        return model.eval()


# ------------------------------------------------------------------------------------------ the reward model
class ArmoRewardModel:
    """Backbone + regression + gate: ``score_texts(prompts, responses)`` as one reward model."""

    def __init__(self, backbone, tokenizer, gate: ArmoGate, info: dict, device):
        self.backbone, self.tokenizer, self.gate, self.info = backbone, tokenizer, gate, info
        self.device = torch.device(device)
        self.names = gate.names

    @torch.no_grad()
    def score_texts(self, prompts, responses, batch_size: int = 16) -> dict:
        """prompts: message lists (or strings, one user turn); responses: strings (or assistant message lists).
        Returns score [B], objectives [B, K] (regressed ratings), decorrelated [B, K], gate [B, K], names."""
        from fairhpc.armo.embed import embed_texts
        from fairhpc.rewards.pair_pm import response_text

        ps = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
        rs = [r if isinstance(r, str) else response_text(list(r)) for r in responses]
        st = embed_texts(self.backbone, self.tokenizer, ps, rs, self.info["max_length"], batch_size, self.device)
        if not rs:
            k = len(self.names)
            z = torch.empty(0)
            return {"score": z, "objectives": z.reshape(0, k), "decorrelated": z.reshape(0, k),
                    "gate": z.reshape(0, k), "names": list(self.names)}
        out = self.gate(st["prompt"].float(), st["response"].float())
        return {**{k: v.detach().float().cpu() for k, v in out.items()}, "names": list(self.names)}


def load_armo(path, device="cpu") -> ArmoRewardModel:
    """The ArmoRM of a model directory written by ``fairhpc train-armo`` (RUN/final)."""
    from transformers import AutoModel

    from fairhpc.config import ModelConfig
    from fairhpc.errors import ModelPathError
    from fairhpc.tokenizer import load_tokenizer

    root = Path(str(path)).expanduser()
    info = read_marker(root)
    if info is None or info.get("kind") != "armo":
        raise ModelPathError(f"{path}: not an ArmoRM directory (no fairhpc_model.json with kind armo)")
    for f in (GATE_WEIGHTS, GATE_CONFIG):
        if not (root / f).is_file():
            raise ModelPathError(f"{path}: {f} is missing (an incomplete ArmoRM directory)")
    device = torch.device(device)
    ref = info["backbone"]
    local = root / ref
    src = str(local) if (not Path(ref).is_absolute() and local.is_dir()) else ref
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    backbone = AutoModel.from_pretrained(src, torch_dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(root)))
    gate = ArmoGate.from_pretrained(root).to(device)
    return ArmoRewardModel(backbone, tokenizer, gate, info, device)


class ArmoScorer(Scorer):
    """ArmoRM (:class:`ArmoRewardModel`): ``score_texts(prompts, responses)`` gives the score, the K objective scores,
    the gate weights and the objectives' names."""

    kind = "armo"

    def __init__(self, model, device, name: str):
        super().__init__(name, device)
        self.model = model

    def _score(self, prompts, responses, batch_size: int, desc: str) -> dict:
        from tqdm.auto import tqdm

        parts: dict = {"score": [], "objectives": [], "gate": []}
        names = None
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not prompts):
            out = self.model.score_texts(list(prompts[start:start + batch_size]),
                                         list(responses[start:start + batch_size]))
            names = list(out["names"])
            for k, acc in parts.items():
                v = out[k]
                acc.append(np.asarray(v.detach().double().cpu() if hasattr(v, "detach") else v, dtype=np.float64))
        res = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
        res["names"] = names or []
        return res

    def _lengths(self, texts: list[str]) -> np.ndarray:
        tok = getattr(self.model, "tokenizer", None)
        if tok is not None:
            return np.array([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts], dtype=np.int64)
        return np.array([len(t.split()) for t in texts], dtype=np.int64)

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "scoring pairs"):
        from fairhpc.rewards.pair_pm import response_text

        ch = [response_text(ex.chosen) for ex in examples]
        rj = [response_text(ex.rejected) for ex in examples]
        prompts = [ex.prompt for ex in examples]
        c = self._score(prompts, ch, batch_size, f"{desc} (chosen)")
        r = self._score(prompts, rj, batch_size, f"{desc} (rejected)")
        scores = PairScores(c["score"], r["score"], self._lengths(ch), self._lengths(rj))
        extras = {"objectives": {"names": c["names"], "chosen": c["objectives"], "rejected": r["objectives"]},
                  "gate": {"names": c["names"], "chosen": c["gate"], "rejected": r["gate"]}}
        return scores, extras

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        s = self._score(list(prompts), list(responses), batch_size, desc)
        return s["score"], self._lengths(list(responses))
