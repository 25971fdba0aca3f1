"""Run under torchrun with 2 ranks (gloo, TRITON_INTERPRET=1): the fused kernel with scope ``global`` on
each rank's shard equals one process over the concatenated batch -- loss, metrics and the gradients of
the local inputs -- on the single-program and the multi-program paths.  Writes OUT/ok on success."""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from fairhpc_kernels import fair_loss as fl

from fairhpc.config import FairnessConfig
from fairhpc.losses import LossOutput, dpo_loss, kernel_spec, rm_loss

SMALL = fl.LaunchConfig(block=16, single_program_max=16, max_programs=4, row_block=2)
CASES = [  # (kind, mode, tau, reduction, launch)
    ("rm", "bt", -1.0, "mean", None), ("rm", "fr", -1.0, "sum", None), ("rm", "fr", 0.0, "mean", SMALL),
    ("rm", "fr", 2.0, "mean", None), ("rm", "fc", 0.5, "sum", SMALL), ("rm", "fc", -5.0, "mean", None),
    ("dpo", "dpo", -1.0, "sum", SMALL), ("dpo", "fr", 10.0, "mean", SMALL), ("dpo", "fr", 1e-3, "sum", None),
    ("dpo", "fc", 0.2, "mean", None), ("dpo", "fc", -1.0, "sum", SMALL),
]


def main(out: Path):
    assert fl.INTERPRETED, "run with TRITON_INTERPRET=1"
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sizes = [23, 40]  # unequal shards; rank 1's shard takes the multi-program path under SMALL
    lo, hi = sum(sizes[:rank]), sum(sizes[: rank + 1])
    g = torch.Generator().manual_seed(11)
    full = [torch.randn(sum(sizes), generator=g) * 3 for _ in range(4)]
    full[0][:3] = torch.tensor([50.0, -50.0, 0.5])  # extreme margins cross ranks
    go = torch.tensor(-0.73)  # grad_output != 1
    for kind, mode, tau, reduction, launch in CASES:
        nin = 2 if kind == "rm" else 4
        kw = {"mode": mode, "tau": tau, "alpha": 0.4, "gamma": 0.6, "reduction": reduction, "beta": 0.5}
        cfg_g, cfg_1 = FairnessConfig(scope="global", **kw), FairnessConfig(scope="micro", **kw)
        whole = [t.clone().requires_grad_() for t in full[:nin]]
        one = LossOutput(*fl.fused_loss(kind, *whole, spec=kernel_spec(cfg_1), launch=launch))
        one.loss.backward(go)
        local = [t[lo:hi].clone().requires_grad_() for t in full[:nin]]
        glob = LossOutput(*fl.fused_loss(kind, *local, spec=kernel_spec(cfg_g, True), launch=launch))
        glob.loss.backward(go)
        case = f"rank {rank} {kind} {mode} tau={tau} {reduction} {'small' if launch else 'default'}"
        # float32 sums in a different order: agreement to a few float32 ulps
        torch.testing.assert_close(glob.loss, one.loss, rtol=2e-6, atol=1e-7, msg=case)
        for k in one.metrics:
            torch.testing.assert_close(glob.metrics[k], one.metrics[k], rtol=2e-6, atol=2e-6,
                                       msg=f"{case} {k}")
        for lt, wt in zip(local, whole):
            torch.testing.assert_close(lt.grad, wt.grad[lo:hi], rtol=1e-5,
                                       atol=1e-6 * wt.grad.abs().max().item(), msg=case)
        # and the torch reference's global scope (float64) agrees with the kernel's
        ref_in = [t[lo:hi].double().requires_grad_() for t in full[:nin]]
        ref = (rm_loss if kind == "rm" else dpo_loss)(*ref_in, cfg=cfg_g)
        ref.loss.backward(go.double())
        torch.testing.assert_close(glob.loss.double(), ref.loss, rtol=2e-5, atol=1e-6, msg=case)
        for lt, rt in zip(local, ref_in):
            torch.testing.assert_close(lt.grad.double(), rt.grad, rtol=1e-4,
                                       atol=2e-5 * rt.grad.abs().max().item(), msg=case)
    # the loss is bitwise identical on both ranks (same rows, same merge order)
    both = [torch.empty(()) for _ in range(2)]
    dist.all_gather(both, glob.loss.detach())
    assert both[0].item() == both[1].item(), both
    dist.barrier()
    if rank == 0:
        (out / "ok").write_text(f"checked {len(CASES)} cases on {dist.get_world_size()} ranks\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TRITON_INTERPRET", "1")
    main(Path(sys.argv[1]))
