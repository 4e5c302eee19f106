"""OASIS speed on this machine: training and synthesis images/s, ours vs the published computation.

For each size / preset we time, in one run:
- "ours": bf16 autocast + channels-last where the CPU is fast at it, SPADE's noise conv on one
  channel (the same function, see models/oasis.py), fused gamma/beta conv;
- "fp32 ref": the same networks in fp32 NCHW with z concatenated to the label map at every
  SPADE, i.e. what the published implementation computes.
Also the generator's FLOPs per image (torch's FlopCounterMode, counted on the reference path) and
the achieved FLOP/s as a fraction of a plain matmul's (2048x2048, same dtype) in the same run.

    python -m bench.images            # all sizes (slow: the fp32 paper preset at 128x192)
    python -m bench.images --quick    # 64x64 only, short timings
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.common import print_table, save
from models.oasis import OASISGenerator, UNetDiscriminator, preset_widths
from models.oasis_losses import discriminator_loss, generator_loss, labelmix, labelmix_loss
from pipeline.device import cpu_has_fast_bf16

# The published implementation on this machine (2 cores, fp32), from the issue.
PUBLISHED = {("paper", 16, 64): (22.0, 1.3), ("paper", 32, 128): (3.6, 0.19)}

CASES = [
    # name, preset, g_ch, d_ch, spade_hidden, classes, H, W
    ("default 64x64", "small", 8, 16, 32, 7, 64, 64),
    ("paper ch16 64x64", "paper", 16, 64, 128, 8, 64, 64),
    ("default 128x192", "small", 8, 16, 32, 12, 128, 192),
    ("paper ch32 128x192", "paper", 32, 64, 128, 12, 128, 192),
]


def _timed(fn, min_seconds: float, per_call: int) -> float:
    """images/s of `fn` (which processes `per_call` images): one warm-up call, then >= min_seconds."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += per_call
        if time.perf_counter() - t0 >= min_seconds:
            return n / (time.perf_counter() - t0)


def _matmul_flops(bf16: bool, seconds: float) -> float:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return _timed(lambda: a @ b, seconds, 1) * 2 * 2048**3


def bench_case(case: tuple, fast: bool, seconds: float) -> dict:
    name, preset, g_ch, d_ch, hidden, classes, h, w = case
    torch.manual_seed(0)
    g_widths, d_widths = preset_widths(preset, g_ch, d_ch)
    G = OASISGenerator(classes, h, w, g_widths, 64, hidden)
    D = UNetDiscriminator(classes, d_widths)
    mem = torch.channels_last if fast else torch.contiguous_format
    G.to(memory_format=mem)
    D.to(memory_format=mem)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if fast else contextlib.nullcontext
    synth_bs, train_bs = (16, 8) if h * w <= 64 * 64 else (4, 2)

    def batch(bs: int):
        mask = torch.randint(0, classes, (bs, h, w))
        label = F.one_hot(mask, classes).permute(0, 3, 1, 2).float().contiguous(memory_format=mem)
        real = (torch.rand(bs, 3, h, w) * 2 - 1).contiguous(memory_format=mem)
        return mask, label, real, torch.randn(bs, 64)

    mask, label, _, z = batch(synth_bs)
    G.eval()

    def synth() -> None:
        with torch.no_grad(), ctx():
            G(label, z, fast_noise=fast)

    synth_speed = _timed(synth, seconds, synth_bs)

    G.train()
    mask, label, real, z = batch(train_bs)
    opt_g = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.999))

    def train_step() -> None:  # the loop of pipeline.train_images, minus bookkeeping
        D.requires_grad_(False)
        with ctx():
            loss_g = generator_loss(D(G(label, z, fast_noise=fast)), mask)
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        with torch.no_grad(), ctx():
            fake = G(label, z, fast_noise=fast)
        with ctx():
            lr, lf = D(real), D(fake)
            mixed, mix = labelmix(real, fake, mask, classes)
            lm = D(mixed)
        loss_d = discriminator_loss(lr, lf, mask) + 10 * labelmix_loss(lm, lr, lf, mix)
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()

    train_speed = _timed(train_step, seconds, train_bs)

    G.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        G(label[:1].float().contiguous(), z[:1], fast_noise=False)  # the published work
    return {
        "case": name,
        "mode": "ours" if fast else "fp32 ref",
        "synth_img_s": synth_speed,
        "train_img_s": train_speed,
        "g_gflop_per_img": counter.get_total_flops() / 1e9,
        "key": (preset, g_ch, h),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="64x64 cases only, short timings")
    p.add_argument("--seconds", type=float, default=None, help="minimum timing per measurement")
    args = p.parse_args()
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    cases = [c for c in CASES if not args.quick or c[6] == 64]
    fast_ok = cpu_has_fast_bf16()
    mm = {"fp32": _matmul_flops(False, seconds / 2), "bf16": _matmul_flops(True, seconds / 2)}

    rows = []
    for case in cases:
        for fast in (True, False) if fast_ok else (False,):
            r = bench_case(case, fast, seconds)
            peak = mm["bf16" if fast else "fp32"]
            # achieved G FLOP/s in synthesis (reference FLOPs: the work the published code does)
            r["g_tflop_s"] = r["g_gflop_per_img"] * r["synth_img_s"] / 1e3
            r["frac_of_matmul"] = r["g_tflop_s"] * 1e12 / peak
            pub = PUBLISHED.get(r.pop("key"))
            r["published_synth"], r["published_train"] = pub if pub and not fast else ("", "")
            rows.append(r)
            print_table([r])
    # speed-ups of ours over the fp32 reference, measured in this run
    for r in rows:
        if r["mode"] == "ours":
            ref = next(
                (x for x in rows if x["case"] == r["case"] and x["mode"] == "fp32 ref"), None
            )
            if ref:
                r["synth_speedup"] = r["synth_img_s"] / ref["synth_img_s"]
                r["train_speedup"] = r["train_img_s"] / ref["train_img_s"]
    print()
    print(
        f"matmul 2048^2: fp32 {mm['fp32'] / 1e12:.3f} TFLOP/s, bf16 {mm['bf16'] / 1e12:.3f} TFLOP/s"
    )
    print_table(rows)
    path = save(
        "images", {"rows": rows, "matmul_flop_s": mm, "seconds": seconds, "quick": args.quick}
    )
    print(f"wrote {path}")
    key = next((r for r in rows if r["case"] == "paper ch16 64x64" and r["mode"] == "ours"), None)
    if key and "synth_speedup" in key:
        print(
            f"paper preset ch=16 64x64: synthesis {key['synth_img_s']:.1f} img/s "
            f"({key['synth_speedup']:.2f}x fp32 ref), training {key['train_img_s']:.2f} img/s "
            f"({key['train_speedup']:.2f}x fp32 ref)"
        )
    else:
        print("no bf16 fast path on this CPU: only the fp32 reference was timed")


if __name__ == "__main__":
    main()
