"""reslab's ResNet-56 training step against a minimal hand-written one (`reference_resnet.py`), side by side.

The same plain loop drives both (forward, cross-entropy, backward, SGD with momentum and weight decay; batch 128 of
3x32x32, fp32, two threads, as He et al. 2015 train their CIFAR nets): only the net differs, so the ratio is the
cost of reslab's nets alone. The two are timed in one process in alternating rounds, each round's median step
kept and the best round of each compared (timeit's rule: on a shared machine the load drifts between back-to-back
measurements), in both memory formats.

    python benchmarks/reference_step.py [--rounds 5] [--steps 6] [--threads 2]   # exits 1 above 1.02x
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `reslab` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.reference_resnet import ReferenceResNet
from reslab.models import NetSpec, build_net

TARGET = 1.02
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def nets(depth: int = 56) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"reslab": build_net(NetSpec("resnet", "residual", depth, 16, "A"), (3, 32, 32), 10),
            "reference": ReferenceResNet(depth)}  # fmt: skip


def median_step_s(net: torch.nn.Module, fmt: torch.memory_format, steps: int, batch: int = 128) -> float:
    """Median seconds of `steps` training steps after two warm-up steps."""
    net = net.to(memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=gen).to(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), generator=gen)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(
    rounds: int = 5, steps: int = 6, depth: int = 56, formats: list[str] | None = None
) -> dict[str, dict[str, float]]:
    """{format: {"reslab": s, "reference": s, "ratio": reslab / reference}}, best of `rounds` alternating rounds."""
    built = nets(depth)
    out = {}
    for name in formats or list(FORMATS):
        fmt = FORMATS[name]
        best = {key: float("inf") for key in built}
        for r in range(rounds):
            order = list(built) if r % 2 == 0 else list(reversed(built))  # neither always runs first
            for key in order:
                best[key] = min(best[key], median_step_s(built[key], fmt, steps))
        out[name] = {**best, "ratio": best["reslab"] / best["reference"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depth", type=int, default=56)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {k: sum(p.numel() for p in n.parameters()) for k, n in nets(args.depth).items()}
    print(f"ResNet-{args.depth}: reslab {params['reslab']:,} / reference {params['reference']:,} parameters; "
          f"batch 128, fp32, {args.threads} threads, best of {args.rounds} rounds x {args.steps} steps")  # fmt: skip
    ok = True
    for name, r in compare(args.rounds, args.steps, args.depth).items():
        ok &= r["ratio"] <= TARGET
        print(f"{name:>13}: reslab {1e3 * r['reslab']:7.1f} ms  reference {1e3 * r['reference']:7.1f} ms  "
              f"ratio {r['ratio']:.3f} (target <= {TARGET})")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
