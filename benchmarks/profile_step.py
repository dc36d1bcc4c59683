"""Profile reslab's training step for ResNet-20/56/110 (batch 128, CIFAR-shaped synthetic data) and say what bounds it.

    python benchmarks/profile_step.py                         # eager fp32 and the fast bf16 step, on CUDA if present
    python benchmarks/profile_step.py --depth 56 --variant eager-fp32 --steps 30 --out reports/profile

For each net and variant: wall time per step, the GPU's kernel time and busy fraction, kernels launched per step,
the top operators, one sentence on what bounds the step, and a Chrome trace (`<out>/<variant>-<net>.json`, open it
in Perfetto). `<out>/profile.json` holds every summary. Variants are those of benchmarks/test_train_step.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.test_train_step import VARIANTS, recipe
from reslab.devices import resolve_device
from reslab.models import NetSpec
from reslab.profiling import profile_step, write_profiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", default="20,56,110", help="comma-separated depths (default 20,56,110)")
    p.add_argument("--block", default="residual")
    p.add_argument("--variant", default=None, help=f"one of {', '.join(VARIANTS)} (default: eager-fp32, and "
                   "fast-bf16 on CUDA)")  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="profiled steps after the warm-up (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="steps before the profile starts (default 5)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="reports/profile", help="folder for traces and profile.json")
    p.add_argument("--no-trace", action="store_true", help="write profile.json only (traces are tens of MB)")
    args = p.parse_args()

    device = resolve_device(args.device)
    variants = [args.variant] if args.variant else ["eager-fp32", *(["fast-bf16"] if device == "cuda" else [])]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    profiles = []
    for variant in variants:
        for depth in (int(d) for d in args.depth.split(",")):
            spec = NetSpec("resnet", args.block, depth, 16)
            cfg = recipe(variant, device)
            trace = None if args.no_trace else out / f"{variant}-{spec.name}.json"
            result = profile_step(spec, cfg, args.steps, args.warmup, trace)
            profiles.append(result)
            print(f"[{variant}] {result.finding()}", flush=True)
    write_profiles(profiles, out / "profile.json")
    print(f"wrote {out / 'profile.json'}" + ("" if args.no_trace else f" and {len(profiles)} traces"))


if __name__ == "__main__":
    main()
