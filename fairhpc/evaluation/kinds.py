"""The kinds of reward model the evaluation commands score, behind one interface.

    scalar   a sequence-classification reward model with one output (``fairhpc train-rm``)
    moe      the same with the gated multi-head head (``train-rm model.head=moe``): E expert scores and a
             softmax gate; the reward is their gated sum (fairhpc/models.py)
    pair_pm  a pairwise preference model (``fairhpc train-pair-pm``, fairhpc/tasks/pair_pm.py): it compares
             two responses and gives P(y1 > y2); it has no scalar score
    armo     ArmoRM (fairhpc/armo/): a score plus K objective scores and the gate weights over them

A model directory says its kind in ``fairhpc_model.json`` (``{"kind": ...}``, :func:`write_marker`); without
that file, config.json's ``fairhpc_kind`` / ``fairhpc_head`` decide, and anything else is scalar.

A scorer (:func:`load_model_scorer`, :func:`scorer_for_model`) has
    score_pairs(examples, data_cfg, batch_size, desc) -> (PairScores, extras)
    score_responses(prompts, responses, data_cfg, batch_size, desc) -> ([N] rewards, [N] lengths)
and a pair-pm scorer also ``prefer`` (log-odds of y1 over y2) and ``preference_matrices`` (all pairs of
candidates).  For a pair-pm, PairScores hold log P(chosen > rejected) and log P(rejected > chosen), so
their difference is the preference's log-odds and accuracy counts P(chosen > rejected) > 1/2, as RLHFlow's
RewardBench script does.  ``extras`` carries what a kind adds per pair (gate weights, objective scores,
both orders' probabilities); :func:`attach_extras` writes it into the per-example rows and the summary.

Best-of-N with a pairwise model (:func:`pairwise_best_of_n_curve`): round robin (most wins inside the
n-subset) or a knockout tournament (RLHFlow's linear-cost selection), from the matrix of all pairwise
preferences of a prompt's candidates.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path

import numpy as np

from fairhpc import registry
from fairhpc.errors import ConfigError, ModelPathError

MARKER = "fairhpc_model.json"
SCALAR_KINDS = ("scalar", "moe", "armo")  # kinds that give one score per response


class ScalarScoreError(ConfigError):
    """A pairwise model was asked for a scalar score."""

    kind = "model kind"


# ------------------------------------------------------------------------------------------ kinds
def write_marker(model_dir, info: dict) -> None:
    """``model_dir/fairhpc_model.json`` (atomically); ``info["kind"]`` must be a registered kind."""
    from fairhpc.io import atomic_write_json

    if info.get("kind") not in registry.MODEL_KINDS:
        raise ValueError(f"unknown model kind {info.get('kind')!r}; registered: {', '.join(registry.MODEL_KINDS)}")
    atomic_write_json(Path(model_dir) / MARKER, info)


def read_marker(path) -> dict | None:
    """The parsed fairhpc_model.json of a local model directory, or None."""
    f = Path(str(path)).expanduser() / MARKER
    if not f.is_file():
        return None
    try:
        info = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelPathError(f"{f}: unreadable model marker ({e})") from None
    if not isinstance(info, dict) or info.get("kind") not in registry.MODEL_KINDS:
        got = info.get("kind") if isinstance(info, dict) else info
        raise ModelPathError(f"{f}: field 'kind': {got!r} is not a model kind "
                             f"({', '.join(registry.MODEL_KINDS)})")
    return info


def _kind_of_config(cfg: dict) -> str:
    if cfg.get("fairhpc_kind") in registry.MODEL_KINDS:
        return cfg["fairhpc_kind"]
    return "moe" if cfg.get("fairhpc_head") == "moe" else "scalar"


def detect_kind(path) -> str:
    """The kind of a saved model: its marker, else its config.json, else scalar (also for hub names)."""
    info = read_marker(path)
    if info is not None:
        return info["kind"]
    cfg = Path(str(path)).expanduser() / "config.json"
    if cfg.is_file():
        try:
            return _kind_of_config(json.loads(cfg.read_text()))
        except (OSError, json.JSONDecodeError):
            return "scalar"
    return "scalar"


def kind_of_model(model) -> str:
    """The kind of a model in memory (its config's fairhpc_kind / fairhpc_head)."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return _kind_of_config(cfg.to_dict() if hasattr(cfg, "to_dict") else {})


def require_scalar(path, option: str = "--model", purpose: str = "this command needs one score per response") -> str:
    """Refuse (before any model is loaded) a model that cannot give a scalar score; returns its kind."""
    kind = detect_kind(path)
    if kind not in SCALAR_KINDS:
        raise ScalarScoreError(
            f"{option} {path}: a pairwise preference model (kind {kind}, see {MARKER}) compares two responses "
            f"and has no scalar score, but {purpose}; give a scalar, moe or armo reward model, or score it "
            "pairwise (eval-rm, eval-benchmark, best-of-n --reward-model with --pairwise)")
    return kind


# ------------------------------------------------------------------------------------------ scorers
@contextlib.contextmanager
def _eval_mode(model):
    was = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        yield
    finally:
        if hasattr(model, "train"):
            model.train(was)


class Scorer:
    kind = "scalar"
    pairwise = False

    def __init__(self, name: str, device):
        self.name, self.device = str(name), device

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "scoring pairs"):
        raise NotImplementedError

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        raise NotImplementedError


class RewardModelScorer(Scorer):
    """A sequence-classification reward model (kinds scalar and moe)."""

    def __init__(self, model, tokenizer, device, name: str):
        super().__init__(name, device)
        self.model, self.tokenizer = model, tokenizer
        self.kind = kind_of_model(model)

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "scoring pairs"):
        from fairhpc.evaluation.scoring import PairScores, _response_length, score_pairs, tokenize_pairs

        with _eval_mode(self.model):
            if self.kind != "moe":
                return score_pairs(self.model, self.tokenizer, examples, data_cfg, batch_size, self.device,
                                   desc), {}
            toks = tokenize_pairs(examples, self.tokenizer, data_cfg)
            seqs = [t["chosen_input_ids"] for t in toks] + [t["rejected_input_ids"] for t in toks]
            parts = _reward_parts(self.model, seqs, self.tokenizer.pad_token_id, batch_size, self.device, desc)
        n = len(toks)
        lengths = [np.array([_response_length(t[f"{s}_labels"]) for t in toks], dtype=np.int64)
                   for s in ("chosen", "rejected")]
        scores = PairScores(parts["score"][:n], parts["score"][n:], *lengths)
        names = [f"expert_{e}" for e in range(parts["experts"].shape[1])]
        extras = {"experts": {"names": names, "chosen": parts["experts"][:n], "rejected": parts["experts"][n:]},
                  "gate": {"names": names, "chosen": parts["gate"][:n], "rejected": parts["gate"][n:]}}
        return scores, extras

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        from fairhpc.evaluation.scoring import score_responses

        with _eval_mode(self.model):
            return score_responses(self.model, self.tokenizer, prompts, responses, data_cfg, batch_size,
                                   self.device, desc)


def _reward_parts(model, sequences, pad_id, batch_size, device, desc) -> dict:
    """Like scoring.score_sequences, with a moe head's expert scores and gate weights too."""
    import torch
    from tqdm.auto import tqdm

    from fairhpc.models import reward_parts

    n = len(sequences)
    order = sorted(range(n), key=lambda i: len(sequences[i]), reverse=True)
    out: dict = {}
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n == 0):
            idx = order[start:start + batch_size]
            width = max(len(sequences[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, :len(sequences[i])] = torch.as_tensor(sequences[i], dtype=torch.long)
                mask[row, :len(sequences[i])] = 1
            parts = reward_parts(model, ids.to(device), mask.to(device))
            for k, v in parts.items():
                v = v.detach().double().cpu().numpy()
                if k not in out:
                    out[k] = np.empty((n, *v.shape[1:]), dtype=np.float64)
                out[k][idx] = v
    return out


class PairPMScorer(Scorer):
    """A pairwise preference model (fairhpc/tasks/pair_pm.py): scored pairwise, never by a scalar."""

    kind = "pair_pm"
    pairwise = True

    def __init__(self, model, tokenizer, device, name: str):
        from fairhpc.tasks.pair_pm import answer_token_ids

        super().__init__(name, device)
        self.model, self.tokenizer = model, tokenizer
        self.answer_ids = answer_token_ids(tokenizer)

    def _gaps(self, seqs: list[list[int]], batch_size: int, desc: str) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        from fairhpc.tasks.pair_pm import answer_gap, collate_sequences

        n = len(seqs)
        out = np.empty(n, dtype=np.float64)
        order = sorted(range(n), key=lambda i: len(seqs[i]), reverse=True)
        with _eval_mode(self.model), torch.no_grad():
            for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=n == 0):
                idx = order[start:start + batch_size]
                b = collate_sequences([seqs[i] for i in idx], self.tokenizer.pad_token_id)
                z = answer_gap(self.model, b["input_ids"].to(self.device), b["attention_mask"].to(self.device),
                               b["position_ids"].to(self.device), self.answer_ids)
                out[idx] = z.double().cpu().numpy()
        return out

    def prefer(self, prompts, ys1: list[str], ys2: list[str], data_cfg, batch_size: int,
               desc: str = "comparing pairs") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """([N] log P(y1 > y2) - log P(y2 > y1), [N] z_ab, [N] z_ba) of each (prompt, y1, y2)."""
        import torch

        from fairhpc.tasks.pair_pm import PairTokenizer, pair_margin

        pt = PairTokenizer(self.tokenizer, data_cfg.max_length, data_cfg.max_prompt_length,
                           data_cfg.truncation_side)
        enc = [pt(p, a, b) for p, a, b in zip(prompts, ys1, ys2)]
        n = len(enc)
        z = self._gaps([e[0] for e in enc] + [e[1] for e in enc], batch_size, desc)
        z_ab, z_ba = z[:n], z[n:]
        m = pair_margin(torch.from_numpy(z_ab), torch.from_numpy(z_ba)).numpy()
        return m, z_ab, z_ba

    def score_pairs(self, examples, data_cfg, batch_size: int, desc: str = "comparing pairs"):
        from fairhpc.evaluation.scoring import PairScores
        from fairhpc.tasks.pair_pm import response_text

        ch = [response_text(ex.chosen) for ex in examples]
        rj = [response_text(ex.rejected) for ex in examples]
        m, z_ab, z_ba = self.prefer([ex.prompt for ex in examples], ch, rj, data_cfg, batch_size, desc)
        log_sig = _log_sigmoid
        scores = PairScores(log_sig(m), log_sig(-m), self._lengths(ch), self._lengths(rj))
        extras = {"pairwise": {"p_chosen": _sigmoid(m), "p_chosen_first": _sigmoid(z_ab),
                               "p_chosen_second": _sigmoid(-z_ba)}}
        return scores, extras

    def _lengths(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        return np.array([len(e) for e in enc], dtype=np.int64)

    def preference_matrices(self, prompts, candidates: list[list[str]], data_cfg, batch_size: int,
                            desc: str = "comparing candidates") -> np.ndarray:
        """[P, K, K] P(candidate i > candidate j) for each prompt (diagonal 1/2), from the K(K-1)/2 pairs."""
        k = len(candidates[0])
        pairs = list(itertools.combinations(range(k), 2))
        ps, a, b = [], [], []
        for p, cands in zip(prompts, candidates):
            for i, j in pairs:
                ps.append(p)
                a.append(cands[i])
                b.append(cands[j])
        m, _, _ = self.prefer(ps, a, b, data_cfg, batch_size, desc)
        out = np.full((len(prompts), k, k), 0.5)
        m = m.reshape(len(prompts), len(pairs))
        for col, (i, j) in enumerate(pairs):
            out[:, i, j] = _sigmoid(m[:, col])
            out[:, j, i] = _sigmoid(-m[:, col])
        return out

    def score_responses(self, prompts, responses, data_cfg, batch_size: int, desc: str = "scoring responses"):
        raise ScalarScoreError(
            f"{self.name}: a pairwise preference model (kind pair_pm) compares two responses and has no scalar "
            "score for one response; score it pairwise (eval-rm, eval-benchmark, best-of-n --pairwise)")


class ArmoScorer(Scorer):
    """ArmoRM (fairhpc/armo/): ``score_texts(prompts, responses)`` gives the score, the K objective scores,
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
        from fairhpc.evaluation.scoring import PairScores
        from fairhpc.tasks.pair_pm import response_text

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


def _sigmoid(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _log_sigmoid(x) -> np.ndarray:
    return -np.logaddexp(0.0, -np.asarray(x, dtype=np.float64))


def scorer_for_model(model, tokenizer, device, name: str) -> Scorer:
    """The scorer of a model in memory (the training engine's, for --then-eval)."""
    if kind_of_model(model) == "pair_pm":
        return PairPMScorer(model, tokenizer, device, name)
    return RewardModelScorer(model, tokenizer, device, name)


def load_model_scorer(path, device: str = "auto", option: str = "--model", need_scalar: str | None = None) -> Scorer:
    """Load the model at ``path`` as the scorer of its kind.  ``need_scalar`` (what the caller needs a
    scalar score for): refuse a pairwise model first (:func:`require_scalar`)."""
    from fairhpc.evaluation.scoring import eval_dtype, load_scorer, load_tokenizer_for, resolve_device

    kind = require_scalar(path, option, need_scalar) if need_scalar else detect_kind(path)
    dev = resolve_device(device)
    if kind == "pair_pm":
        from fairhpc.models import load_policy

        tok = load_tokenizer_for(path)
        model = load_policy(str(path), dtype=eval_dtype(dev), tokenizer=tok).to(dev).eval()
        return PairPMScorer(model, tok, dev, str(path))
    if kind == "armo":
        from fairhpc.armo.model import load_armo

        return ArmoScorer(load_armo(str(path), dev), dev, str(path))
    model, tok, dev = load_scorer(path, device)
    return RewardModelScorer(model, tok, dev, str(path))


# ------------------------------------------------------------------------------------------ results
def attach_extras(rows: list[dict], summary: dict, extras: dict, examples) -> None:
    """Write a kind's extras into eval rows and the summary (in place).

    pairwise: per row p_chosen = P(chosen > rejected) and the probabilities of each order alone
    (p_chosen_first: chosen shown as A); summary["pairwise"]: position consistency (both orders agree) and
    the position bias (mean P(answer A) - 1/2 over both orders).
    experts / objectives with gate: per row {name: value} of both responses; summary[kind block]: each
    component's own pairwise accuracy, the mean gate weight overall and per category."""
    if not extras:
        return
    if "pairwise" in extras:
        pw = extras["pairwise"]
        for i, row in enumerate(rows):
            row.update(p_chosen=float(pw["p_chosen"][i]), p_chosen_first=float(pw["p_chosen_first"][i]),
                       p_chosen_second=float(pw["p_chosen_second"][i]))
        first, second = np.asarray(pw["p_chosen_first"]), np.asarray(pw["p_chosen_second"])
        # P(answer A): chosen at A answered A (first), chosen at B answered A (1 - second)
        summary["pairwise"] = {
            "position_consistency": float(np.mean((first > 0.5) == (second > 0.5))) if first.size else math.nan,
            "position_bias_a": float(np.mean((first + 1.0 - second) / 2.0) - 0.5) if first.size else math.nan,
            "p_chosen_mean": float(np.mean(pw["p_chosen"])) if first.size else math.nan}
    for comp in ("experts", "objectives"):
        if comp not in extras:
            continue
        c, g = extras[comp], extras.get("gate")
        names = list(c["names"])
        for i, row in enumerate(rows):
            for side in ("chosen", "rejected"):
                row[f"{comp}_{side}"] = {n: float(v) for n, v in zip(names, c[side][i])}
                if g is not None:
                    row[f"gate_{side}"] = {n: float(v) for n, v in zip(g["names"], g[side][i])}
        block: dict = {"names": names,
                       "accuracy": {n: float(np.mean(c["chosen"][:, k] > c["rejected"][:, k]))
                                    for k, n in enumerate(names)} if len(rows) else {}}
        if g is not None and len(rows):
            both = np.concatenate([g["chosen"], g["rejected"]])
            block["gate_mean"] = {n: float(v) for n, v in zip(g["names"], both.mean(0))}
            cats = np.array([ex.category or "none" for ex in examples] * 2, dtype=object)
            block["gate_mean_by_category"] = {
                cat: {n: float(v) for n, v in zip(g["names"], both[cats == cat].mean(0))}
                for cat in sorted(set(cats.tolist()))}
        summary["moe" if comp == "experts" else "armo"] = block


# ------------------------------------------------------------------------------------------ best of N
def round_robin_winner(P: np.ndarray, members) -> int:
    """The member with the most wins against the others (P[i, j] > 1/2 a win, = 1/2 half a win); ties go
    to the larger summed preference, then to the earlier member."""
    s = np.asarray(list(members))
    sub = P[np.ix_(s, s)]
    off = ~np.eye(len(s), dtype=bool)
    wins = ((sub > 0.5) + 0.5 * (sub == 0.5)) * off
    key = np.stack([wins.sum(1), (sub * off).sum(1)])
    best = np.lexsort((-np.arange(len(s)), key[1], key[0]))[-1]
    return int(s[best])


def knockout_winner(P: np.ndarray, order) -> int:
    """A knockout tournament in bracket ``order``: neighbours meet, the preferred one (the first on a tie)
    goes on, an odd one out gets a bye; n - 1 comparisons."""
    alive = list(order)
    while len(alive) > 1:
        nxt = [alive[k] if P[alive[k], alive[k + 1]] >= 0.5 else alive[k + 1] for k in range(0, len(alive) - 1, 2)]
        if len(alive) % 2:
            nxt.append(alive[-1])
        alive = nxt
    return int(alive[0])


def select_all(P: np.ndarray, method: str) -> np.ndarray:
    """[prompts] the candidate chosen among all K: round robin, or a knockout in sample order."""
    if method not in registry.PAIRWISE_SELECTIONS:
        raise ConfigError(f"--pairwise: {method!r}; allowed: {', '.join(registry.PAIRWISE_SELECTIONS)}")
    k = P.shape[1]
    pick = round_robin_winner if method == "round-robin" else knockout_winner
    return np.array([pick(P[p], range(k)) for p in range(P.shape[0])], dtype=np.int64)


def win_counts(P: np.ndarray) -> np.ndarray:
    """[prompts, K] round-robin wins of each candidate over the other K - 1 (a tie counts one half)."""
    k = P.shape[1]
    off = ~np.eye(k, dtype=bool)
    return (((P > 0.5) + 0.5 * (P == 0.5)) * off).sum(2)


def win_rates(P: np.ndarray) -> np.ndarray:
    """[prompts, K] each candidate's mean preference over the other K - 1 (the round robin over all K)."""
    k = P.shape[1]
    return (P.sum(2) - 0.5) / max(1, k - 1)


def pairwise_best_of_n_curve(P: np.ndarray, ns, method: str, others: dict | None = None, seed: int = 0,
                             max_subsets: int = 2000) -> list[dict]:
    """Expected measures of the response a pairwise model selects from n of the K samples, per n.

    The expectation runs over the n-subsets of the K samples (all of them when there are at most
    ``max_subsets``, else that many drawn at random) and, for a knockout, over a random bracket order per
    subset.  ``proxy_win_rate`` is the selected response's mean preference over all K samples (1/2 at n = 1
    exactly); ``others`` are further [prompts, K] measures (length, true quality, a gold reward)."""
    P = np.asarray(P, dtype=np.float64)
    n_prompts, k = P.shape[:2]
    rng = np.random.default_rng(seed)
    measures = {"proxy_win_rate": win_rates(P), **{name: np.asarray(v, dtype=np.float64)
                                                  for name, v in (others or {}).items()}}
    out = []
    for n in ns:
        if not 1 <= n <= k:
            raise ValueError(f"best-of-n needs 1 <= n <= {k}, got {n}")
        if math.comb(k, n) <= max_subsets:
            subsets = [list(c) for c in itertools.combinations(range(k), n)]
        else:
            subsets = [sorted(rng.choice(k, size=n, replace=False).tolist()) for _ in range(max_subsets)]
        picks = np.empty((n_prompts, len(subsets)), dtype=np.int64)
        for p in range(n_prompts):
            for s, members in enumerate(subsets):
                if method == "round-robin":
                    picks[p, s] = round_robin_winner(P[p], members)
                else:
                    picks[p, s] = knockout_winner(P[p], rng.permutation(members).tolist())
        row = {"n": int(n)}
        for name, v in measures.items():
            row[name] = float(np.take_along_axis(v, picks, axis=1).mean())
        row["kl_bound"] = math.log(n) - (n - 1) / n
        out.append(row)
    return out
