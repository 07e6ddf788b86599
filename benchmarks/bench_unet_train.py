"""Benchmark: U-Net training throughput (samples/s) on CPU, and on CUDA with and without AMP.

For each model of the shipped configs (the seed's live/dead U-Net on 160×160 tiles, the quick
CPU demo, the small-UNet) a full training step — forward, weighted cross-entropy, backward,
SGD update — is timed on synthetic tensors (data loading excluded; see bench_unet.py for the
loader). Prints samples/s, the ratio to the same model on CPU, and how long one epoch over
the seed's 291,765 training tiles would take at that rate.

    python benchmarks/bench_unet_train.py [--cpu-steps 3] [--cpu-batch 8] [--gpu-steps 20]

``run(args)`` returns the table rows (also used by bench_unet.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcna_seg.config import load_config  # noqa: E402
from pcna_seg.unet.models import build_unet, count_parameters  # noqa: E402

SEED_TILES = 291_765
CASES = [
    ("livedead (seed) U-Net d4 w32", "configs/unet/livedead.yaml"),
    ("livedead_quick U-Net d3 w8", "configs/unet/livedead_quick.yaml"),
    ("small_unet contour", "configs/unet/small_unet_contour.yaml"),
]
HEADER = ["model", "params", "device", "amp", "tile", "batch", "samples/s", "x CPU", "seed epoch (h)"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-steps", type=int, default=3, help="timed steps per CPU case")
    p.add_argument("--cpu-batch", type=int, default=8, help="batch size on CPU")
    p.add_argument("--gpu-steps", type=int, default=20, help="timed steps per CUDA case")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    return p.parse_args(argv)


def time_steps(cfg, device: torch.device, batch: int, steps: int, amp: bool) -> float:
    """Samples per second of full training steps (after one warm-up step)."""
    torch.manual_seed(0)
    model = build_unet(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    k = len(cfg.UNET.CLASSES)
    weight = torch.linspace(0.1, 1.0, k, device=device)
    t = cfg.UNET.TILING.TILE
    x = torch.rand(batch, len(cfg.UNET.CHANNELS), t, t, device=device)
    y = torch.randint(0, k, (batch, t, t), device=device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x), y, weight=weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def run(args: argparse.Namespace | None = None) -> list[list]:
    """Time every case; print and return the rows (columns in ``HEADER``)."""
    args = args if args is not None else parse_args([])
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    rows: list[list] = []
    for name, path in CASES:
        cfg = load_config(root / path)
        if cfg.UNET.MODE == "count":
            continue
        params = count_parameters(build_unet(cfg))
        runs = [(torch.device("cpu"), False, args.cpu_batch, args.cpu_steps)]
        if torch.cuda.is_available():
            gb = int(cfg.UNET.DATA.BATCH_SIZE)
            runs += [
                (torch.device("cuda"), False, gb, args.gpu_steps),
                (torch.device("cuda"), True, gb, args.gpu_steps),
            ]
        cpu_rate = None
        for device, amp, batch, steps in runs:
            rate = time_steps(cfg, device, batch, steps, amp)
            cpu_rate = cpu_rate or rate
            hours = SEED_TILES / rate / 3600
            rows.append([name, params, device.type, amp, cfg.UNET.TILING.TILE, batch, round(rate, 1),
                         round(rate / cpu_rate, 1), round(hours, 2)])  # fmt: skip
    print_table(rows)
    return rows


def print_table(rows: list[list]) -> None:
    widths = [max(len(str(r[i])) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for r in [HEADER, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))
    print(f"(threads: {torch.get_num_threads()}; CUDA: {torch.cuda.is_available()}; "
          f"seed epoch = {SEED_TILES:,} tiles at the measured rate, data loading excluded)")  # fmt: skip


if __name__ == "__main__":
    run(parse_args())
