"""ArmoRM stage 1b: multi-output ridge regression from response states to absolute ratings
(``fairhpc armo-regress``).

For each objective k separately (its missing ratings masked out): the ratings_train rows with a rating are
split at random (seed ``seed``) into a fit part and a validation part of share ``armo.val_fraction``; for each
alpha of ``armo.ridge_alphas`` the ridge solution

    w_k(alpha) = argmin ||X w - y||^2 + alpha ||w||^2          (X centred first when armo.fit_intercept)

is fitted on the fit part and scored by mean squared error on the validation part; the best alpha is refitted
on all of the objective's ratings_train rows.  All alphas of an objective come from one eigendecomposition of
its Gram matrix X^T X (float64).  Held-out metrics on ratings_eval (or, without it, the validation part): R^2,
MSE and the row count per objective.

Output (OUT/): regression.safetensors (weight [K, H], bias [K]; metadata: objectives, chosen alphas, the
embeddings' fingerprint and backbone), metrics.json, and regression.png (held-out R^2 per objective).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

REGRESSION = "regression.safetensors"
METRICS = "metrics.json"
PLOT = "regression.png"


def ridge_path(x: np.ndarray, y: np.ndarray, alphas, intercept: bool) -> list[tuple[np.ndarray, float]]:
    """[(w, b)] of the ridge solutions for each alpha (float64)."""
    mu = x.mean(0) if intercept else np.zeros(x.shape[1])
    ym = float(y.mean()) if intercept else 0.0
    xc = x - mu
    g = xc.T @ xc
    evals, evecs = np.linalg.eigh(g)
    proj = evecs.T @ (xc.T @ (y - ym))
    out = []
    for a in alphas:
        w = evecs @ (proj / (np.clip(evals, 0.0, None) + a))
        out.append((w, ym - float(mu @ w)))
    return out


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    if y.size < 2:
        return math.nan
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / sst if sst > 0 else math.nan


def fit(tensors: dict, info: dict, run_cfg) -> tuple[dict, dict]:
    """(regression tensors {"weight", "bias"}, metrics) from gathered embeddings."""
    from fairhpc.errors import DataError

    a = run_cfg.armo
    names = list(info["objectives"])
    x = tensors["ratings_train.response"].double().numpy()
    y = tensors["ratings_train.ratings"].double().numpy()
    held = "ratings_eval" if "ratings_eval.response" in tensors else None
    xe = tensors["ratings_eval.response"].double().numpy() if held else None
    ye = tensors["ratings_eval.ratings"].double().numpy() if held else None
    rng = np.random.default_rng(run_cfg.seed)
    weights, biases, per = [], [], {}
    for k, name in enumerate(names):
        rows = np.flatnonzero(~np.isnan(y[:, k]))
        if rows.size < 4:
            raise DataError(f"{info['sources'].get('ratings_train')}: objective {name!r} has {rows.size} ratings "
                            "in ratings_train; the regression needs at least 4 (fit and validation rows)")
        perm = rng.permutation(rows)
        n_val = min(max(1, round(a.val_fraction * rows.size)), rows.size - 2)
        val, tr = perm[:n_val], perm[n_val:]
        path = ridge_path(x[tr], y[tr, k], a.ridge_alphas, a.fit_intercept)
        mses = [float(((x[val] @ w + b - y[val, k]) ** 2).mean()) for w, b in path]
        best = int(np.argmin(mses))
        (w, b), = ridge_path(x[rows], y[rows, k], [a.ridge_alphas[best]], a.fit_intercept)
        weights.append(w)
        biases.append(b)
        if held:
            m = ~np.isnan(ye[:, k])
            ty, tp = ye[m, k], xe[m] @ w + b
        else:
            ty, tp = y[val, k], x[val] @ path[best][0] + path[best][1]
        per[name] = {"alpha": float(a.ridge_alphas[best]), "val_mse": dict(zip(map(str, a.ridge_alphas), mses)),
                     "n_train": int(rows.size), "n_heldout": int(ty.size), "r2": r2_score(ty, tp),
                     "mse": float(((ty - tp) ** 2).mean()) if ty.size else math.nan}
    reg = {"weight": torch.tensor(np.stack(weights), dtype=torch.float32),
           "bias": torch.tensor(biases, dtype=torch.float32)}
    r2s = [v["r2"] for v in per.values() if not math.isnan(v["r2"])]
    metrics = {"objectives": names, "heldout": held or "validation split", "per_objective": per,
               "r2_mean": float(np.mean(r2s)) if r2s else math.nan, "fit_intercept": a.fit_intercept,
               "hidden_size": int(x.shape[1]), "embeddings_fingerprint": info["fingerprint"]}
    return reg, metrics


def _plot(metrics: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metrics["objectives"]
    vals = [metrics["per_objective"][n]["r2"] for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 1), 3))
    ax.bar(range(len(names)), vals, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel(f"R^2 ({metrics['heldout']})")
    ax.set_ylim(min([0.0, *[v for v in vals if not math.isnan(v)]]), 1)
    ax.set_title("ArmoRM regression: held-out R^2 per objective")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def run_regress(run_cfg, embeddings: str, out_dir) -> dict:
    """Fit and write OUT/regression.safetensors, metrics.json and regression.png; returns the metrics."""
    from fairhpc.armo.embed import load_embeddings, save_tensors
    from fairhpc.io import atomic_write_json

    tensors, info = load_embeddings(embeddings, "--embeddings" if embeddings != run_cfg.armo.embeddings
                                    else "armo.embeddings")
    out = Path(out_dir)
    reg, metrics = fit(tensors, info, run_cfg)
    meta = {"objectives": metrics["objectives"], "alphas": {n: v["alpha"] for n, v in metrics["per_objective"].items()},
            "embeddings_fingerprint": info["fingerprint"], "backbone": info["backbone"],
            "hidden_size": metrics["hidden_size"]}
    save_tensors(out / REGRESSION, reg, meta)
    atomic_write_json(out / METRICS, metrics)
    _plot(metrics, out / PLOT)
    width = max(len(n) for n in metrics["objectives"])
    for n in metrics["objectives"]:
        v = metrics["per_objective"][n]
        print(f"  {n:{width}s}  R^2 {v['r2']:.3f}  alpha {v['alpha']:g}  ({v['n_train']} rated, "
              f"{v['n_heldout']} held out)")
    print(f"[armo-regress] mean R^2 {metrics['r2_mean']:.3f} -> {out / REGRESSION}", flush=True)
    return metrics


def load_regression(path, key: str = "armo.regression") -> tuple[dict, dict]:
    """({"weight", "bias"}, metadata) of a regression file; ConfigError naming ``key``."""
    from safetensors.torch import load_file

    from fairhpc.armo.embed import read_meta
    from fairhpc.errors import ConfigError

    p = Path(str(path))
    if not str(path):
        raise ConfigError(f"{key}: not set; give the regression file of `fairhpc armo-regress` (DIR/{REGRESSION})")
    if not p.is_file():
        raise ConfigError(f"{key}: {path}: no such file (made by `fairhpc armo-regress`, DIR/{REGRESSION})")
    meta = read_meta(p)
    if not meta or "objectives" not in meta:
        raise ConfigError(f"{key}: {path}: not an ArmoRM regression file")
    return load_file(str(p)), meta
