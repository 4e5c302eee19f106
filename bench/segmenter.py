"""Benchmark the downstream segmenter: training and evaluation images/s, fp32 vs bf16, the
product's unet decoder (`train_segmenter.decoder_channels`) vs smp's default one.

    python -m bench.segmenter [--quick] [--arch unet] [--encoder efficientnet-lite0]

A training step is what `train_segmenter` does per batch (augmentation, forward, loss, backward,
AdamW); evaluation is `predict` (argmax over the logits). Inputs are random: the speed does not
depend on the data. Each row records `other_cpu`, the share of the CPU other processes took while
it ran (run it alone: a busy machine halves these figures). bf16 means bf16 autocast + channels-last
where the device computes bf16 fast (`pipeline.device`); elsewhere that row repeats fp32 and says so.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import OtherLoad, print_table, save
from models.segmenter import build_segmenter, segmentation_loss
from pipeline.augment import AugmentConfig, augment
from pipeline.device import autocast, bf16_supported, channels_last_or_cpu, pick_device
from pipeline.predict import predict
from pipeline.train_segmenter import TrainSegmenterConfig


def bench_case(
    arch: str,
    encoder: str,
    decoder: list[int],
    size: tuple[int, int],
    batch: int,
    bf16: bool,
    steps: int,
    device: torch.device,
) -> dict:
    other = OtherLoad()  # other processes' CPU share while this case runs, saved with its row
    torch.manual_seed(0)
    model = build_segmenter(arch, encoder, 12, None, decoder).to(device)
    cl = channels_last_or_cpu(device, bf16)  # as train_segmenter does
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, 3, *size, device=device)
    y0 = torch.randint(0, 12, (batch, *size), device=device)

    def step() -> None:
        x, y = augment(x0, y0, AugmentConfig(), gen, 255)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            logits = model(x)
        loss = segmentation_loss(logits, y, 255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(2):  # warm-up: oneDNN picks kernels on the first calls
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train = steps * batch / (time.perf_counter() - t)

    images = np.random.default_rng(0).integers(0, 256, (batch * 8, *size, 3), dtype=np.uint8)
    predict(model, images[:batch], batch_size=batch, bf16=bf16)
    t = time.perf_counter()
    predict(model, images, batch_size=batch, bf16=bf16)
    evaluate = len(images) / (time.perf_counter() - t)
    return {
        "decoder": str(decoder or "smp default"),
        "size": f"{size[0]}x{size[1]}",
        "batch": batch,
        "precision": "bf16" if bf16 and bf16_supported(device) else "fp32",
        "train_img_s": round(train, 1),
        "eval_img_s": round(evaluate, 1),
        "other_cpu": other.share(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="64x64 only, few steps (smoke run)")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    cases = [((64, 64), 32)] if args.quick else [((64, 64), 32), ((96, 128), 16)]
    steps = 3 if args.quick else 30  # 10 steps varied by 20% run to run
    rows = []
    # the product's decoder (train_segmenter.decoder_channels) and smp's wider default
    decoders = [TrainSegmenterConfig().decoder_channels] if args.arch == "unet" else []
    for size, batch in cases:
        for decoder in [*decoders, []]:
            for bf16 in (False, True):
                row = bench_case(args.arch, args.encoder, decoder, size, batch, bf16, steps, device)
                rows.append(row)
                print(f"  {row}", flush=True)
    print_table(rows)
    fp32, bf = rows[0], rows[1]
    save(
        "segmenter",
        {"arch": args.arch, "encoder": args.encoder, "device": str(device), "rows": rows},
    )
    print(
        f"segmenter {args.arch}/{args.encoder} on {device} at {fp32['size']}: train "
        f"{bf['train_img_s']} img/s {bf['precision']} ({bf['train_img_s'] / fp32['train_img_s']:.2f}x "
        f"fp32), eval {bf['eval_img_s']} img/s"
    )


if __name__ == "__main__":
    main()
