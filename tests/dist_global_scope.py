"""Run under torchrun with 2 ranks (gloo): the torch reference's global-scope loss and gradients on each rank's
shard equal those of one process over the concatenated batch, with one collective per call; and the step scope
(two micro-batches per rank, statistics from step_statistics) adds up to one process over the whole step.
Writes OUT/ok on success."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from fairhpc.config import FairnessConfig
from fairhpc.losses import dpo_loss, fairness_loss_from_margins, rm_loss, step_statistics

CASES = [("bt", -1.0), ("fr", -1.0), ("fr", 0.0), ("fr", 2.0), ("fc", 0.5), ("fc", -5.0)]


class CountCollectives:
    """Counts collective calls on torch.distributed (the reference must use one all_gather per loss)."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "broadcast")

    def __init__(self):
        self.calls, self.saved = [], {}

    def __enter__(self):
        for name in self.NAMES:
            if hasattr(dist, name):
                fn = self.saved[name] = getattr(dist, name)
                setattr(dist, name, lambda *a, _n=name, _f=fn, **k: (self.calls.append(_n), _f(*a, **k))[1])
        return self

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def check_global(lo, hi, full):
    for mode, tau in CASES:
        for kind in ("rm", "dpo"):
            m = mode if not (kind == "dpo" and mode == "bt") else "dpo"
            for reduction in ("mean", "sum"):
                kw = {"mode": m, "tau": tau, "alpha": 0.4, "gamma": 0.6, "reduction": reduction}
                cfg_g, cfg_1 = FairnessConfig(scope="global", **kw), FairnessConfig(scope="micro", **kw)
                fn = rm_loss if kind == "rm" else dpo_loss
                nin = 2 if kind == "rm" else 4
                whole = [t.clone().requires_grad_() for t in full[:nin]]
                ref = fn(*whole, cfg=cfg_1)
                ref.loss.backward()
                local = [t[lo:hi].clone().requires_grad_() for t in full[:nin]]
                with CountCollectives() as cc:
                    out_g = fn(*local, cfg=cfg_g)
                    out_g.loss.backward()
                assert len(cc.calls) == 1 and cc.calls[0].startswith("all_gather"), cc.calls
                torch.testing.assert_close(out_g.loss, ref.loss, rtol=1e-10, atol=1e-12)
                for k in ref.metrics:
                    torch.testing.assert_close(out_g.metrics[k], ref.metrics[k], rtol=1e-6, atol=1e-6)
                for lt, wt in zip(local, whole):
                    torch.testing.assert_close(lt.grad, wt.grad[lo:hi], rtol=1e-9, atol=1e-12)


def check_step(lo, hi, d):
    """Rank r holds d[lo:hi] as two micro-batches; the step's gradient is that of one process over all of d."""
    cut = lo + (hi - lo) // 2
    for mode, tau in CASES:
        kw = {"mode": mode, "tau": tau, "alpha": 0.4, "gamma": 0.6}
        whole = d.clone().requires_grad_()
        ref = fairness_loss_from_margins(whole, FairnessConfig(**kw))
        ref.loss.backward()
        cfg = FairnessConfig(scope="step", **kw)
        with CountCollectives() as cc:
            stats = step_statistics([d[lo:cut], d[cut:hi]], cfg)
        assert len(cc.calls) == 1, cc.calls  # one exchange per optimizer step
        parts = [d[lo:cut].clone().requires_grad_(), d[cut:hi].clone().requires_grad_()]
        with CountCollectives() as cc:
            outs = [fairness_loss_from_margins(t, cfg, stats=stats) for t in parts]
            sum(o.loss for o in outs).backward()
        assert cc.calls == [], cc.calls  # none per micro-batch
        torch.testing.assert_close(outs[0].loss, ref.loss, rtol=1e-12, atol=0.0)
        torch.testing.assert_close(torch.cat([t.grad for t in parts]), whole.grad[lo:hi], rtol=1e-9,
                                   atol=1e-13)


def main(out: Path):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [5, 11]  # unequal shards
    g = torch.Generator().manual_seed(7)
    full = [torch.randn(sum(sizes), generator=g, dtype=torch.float64) * 3 for _ in range(4)]
    full[0][1] = -60.0  # the shifts differ between the ranks
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    check_global(lo, hi, full)
    check_step(lo, hi, full[0] - full[1])
    dist.barrier()
    if rank == 0:
        (out / "ok").write_text(f"checked {world} ranks\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
