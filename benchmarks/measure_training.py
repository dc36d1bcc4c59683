"""Measure reslab's training overheads on this machine and print the ratios the issues ask for.

    python benchmarks/measure_training.py            # ResNet-20 w16, batch 128, 3x32x32, CPU
    python benchmarks/measure_training.py --steps 60

1. Lightning training step (ResLabModule + gradient telemetry at the default interval) / plain PyTorch loop step,
   same net, data and recipe (target <= 1.10).
2. Data path images/s vs the model's training images/s (target >= 10x), for CIFAR-shaped uint8 batches with
   normalise + pad-crop-flip on the device, and for MNIST-1D.
3. Gradient telemetry overhead: step time probing every step vs never, and what that costs at interval K.
"""

from __future__ import annotations

import argparse
import json

import torch

from reslab.data.cifar import Normalize
from reslab.data.registry import load_dataset
from reslab.data.tensors import Split
from reslab.models import NetSpec
from reslab.perf import data_path_images_per_s, lightning_over_plain, lightning_step_times, plain_loop_step_times
from reslab.train.config import TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement (after 3 warm-up steps)")
    p.add_argument("--rounds", type=int, default=3, help="alternating plain/Lightning rounds; the best of each counts")
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()

    cfg = TrainConfig(batch_size=args.batch_size, device=args.device)
    spec = NetSpec("resnet", "residual", args.depth, args.width)
    images = load_dataset("synthetic", {"shape": [3, 32, 32], "train_size": 20 * args.batch_size, "test_size": 128})
    out: dict[str, float] = {}

    plain, light = lightning_over_plain(spec, images, cfg, args.steps, rounds=args.rounds, device=args.device)
    out["plain_step_s"], out["lightning_step_s"] = plain.median_s, light.median_s
    out["lightning_over_plain"] = light.median_s / plain.median_s
    print(f"{spec.name} batch {args.batch_size} on {args.device}, {torch.get_num_threads()} threads")
    print(f"  plain PyTorch step   {1e3 * plain.median_s:8.1f} ms  ({plain.images_per_s:,.0f} img/s)")
    print(f"  Lightning step       {1e3 * light.median_s:8.1f} ms  ({light.images_per_s:,.0f} img/s)")
    print(f"  ratio                {out['lightning_over_plain']:8.3f}  (target <= 1.10)")

    n = 10_000
    uint8 = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (n,)))
    aug = Normalize(torch.full((3,), 0.5), torch.full((3,), 0.25), augment=True)
    cifar_rate = data_path_images_per_s(uint8, args.batch_size, aug, device=args.device)
    out["data_cifar_images_per_s"] = cifar_rate
    out["data_over_model_cifar"] = cifar_rate / plain.images_per_s
    print(f"  data path (uint8 -> normalise + pad-crop-flip) {cifar_rate:,.0f} img/s = "
          f"{out['data_over_model_cifar']:.0f}x the model (target >= 10x)")  # fmt: skip

    mnist = load_dataset("mnist1d")
    small = NetSpec("resnet", "residual", 56, 8)
    small_cfg = TrainConfig(device=args.device)
    model_1d = plain_loop_step_times(small, mnist, small_cfg, args.steps, device=args.device)
    mnist_rate = data_path_images_per_s(mnist.train, 128, device=args.device)
    out["data_mnist1d_images_per_s"] = mnist_rate
    out["data_over_model_mnist1d"] = mnist_rate / model_1d.images_per_s
    print(f"  data path (MNIST-1D) {mnist_rate:,.0f} img/s = {out['data_over_model_mnist1d']:.0f}x "
          f"{small.name}'s {model_1d.images_per_s:,.0f} img/s")  # fmt: skip

    for label, net_spec, data, base in (("2-D", spec, images, cfg), ("MNIST-1D", small, mnist, small_cfg)):
        every = base.model_copy(update={"telemetry_every": 1})
        probed = lightning_step_times(net_spec, data, every, args.steps)
        bare = lightning_step_times(net_spec, data, base, args.steps, telemetry=False)
        per_probe = probed.median_s / bare.median_s - 1
        key = label.lower().replace("-", "")
        out[f"telemetry_overhead_every_step_{key}"] = per_probe
        out[f"telemetry_overhead_default_{key}"] = per_probe / base.telemetry_every
        print(f"  telemetry, {net_spec.name} {label}: +{100 * per_probe:.1f} % on a probed step -> "
              f"+{100 * per_probe / base.telemetry_every:.2f} % at every {base.telemetry_every} steps")  # fmt: skip
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
