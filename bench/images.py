"""OASIS speed on this machine: training and synthesis images/s, ours vs the published computation.

For each size / preset, timed in one run:
- "ours": the models' defaults, which compute exactly the published functions with fewer FLOPs
  (SPADE's noise conv on one channel, the discriminator's resampling folded into its 3x3 convs, see
  models/oasis.py), under bf16 autocast + channels-last where the CPU has AMX / AVX512-BF16;
  elsewhere in fp32, channels-last for synthesis and NCHW for training ("CL/NCHW": oneDNN's
  faster fp32 layout for each on AVX2, measured);
- "fp32 ref": fp32 NCHW, z concatenated to the label map at every SPADE, the discriminator pooling
  and upsampling where the published code does (fast_noise=False, fast_resample=False): the
  published computation.
Training is one step of pipeline.train_images' loop (G step, D step with LabelMix, EMA lerp).
FLOPs per image are counted with torch's FlopCounterMode, for ours and for the reference; achieved
FLOP/s is shown as a fraction of a plain 2048x2048 matmul's in the same dtype, in the same run.
The issue's published figures (the published implementation, 2 cores, fp32, on the machine the
issue was measured on) are compared as ratios; "fp32 ref vs published" tells how this machine and
that one compare.

Timings are wall clock, torch's default threads, ours and the reference called in alternation so
that other processes' load hits both alike (the share of the CPU other processes took during each
case is recorded with its rows: bench.common.OtherLoad).
The CLI's CPU runtime defaults (pipeline/cpu_env.py: passive OpenMP waiting, huge pages) are
set before torch is imported, as in a pipeline run.

    python -m bench.images            # all sizes (slow: the fp32 paper preset at 128x192)
    python -m bench.images --quick    # 64x64 only, short timings
"""

from __future__ import annotations

from pipeline import cpu_env

cpu_env.apply_defaults()  # before torch is imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.common import OtherLoad, print_table, save  # noqa: E402
from models.oasis import OASISGenerator, UNetDiscriminator, preset_widths  # noqa: E402
from models.oasis_losses import (  # noqa: E402
    discriminator_loss,
    generator_loss,
    labelmix,
    labelmix_loss,
)
from pipeline.device import cpu_has_fast_bf16  # noqa: E402

# The published implementation on the machine (2 cores, fp32): (synthesis, training) img/s.
PUBLISHED = {("paper", 16, 64): (22.0, 1.3), ("paper", 32, 128): (3.6, 0.19)}
TARGET = (4.0, 2.0)  # the issue: ours >= 4x published synthesis and >= 2x published training

CASES = [
    # name, preset, g_ch, d_ch, spade_hidden, classes, H, W
    ("default 64x64", "small", 8, 16, 32, 7, 64, 64),
    ("paper ch16 64x64", "paper", 16, 64, 128, 8, 64, 64),
    ("paper ch32 64x64", "paper", 32, 64, 128, 8, 64, 64),
    ("default 128x192", "small", 8, 16, 32, 12, 128, 192),
    ("paper ch16 128x192", "paper", 16, 64, 128, 12, 128, 192),
    ("paper ch32 128x192", "paper", 32, 64, 128, 12, 128, 192),
]
CL, NCHW = torch.channels_last, torch.contiguous_format


def _timed(fn, min_seconds: float, per_call: int) -> float:
    """images/s of `fn` (which processes `per_call` images): one warm-up call, then >= min_seconds."""
    return _timed_together([fn], min_seconds, [per_call])[0]


def _timed_together(fns: list, min_seconds: float, per_call: list[int]) -> list[float]:
    """images/s of each fn, called in turn (after one warm-up call each) until each ran >= min_seconds."""
    for fn in fns:
        fn()
    spent, done = [0.0] * len(fns), [0] * len(fns)
    while min(spent) < min_seconds:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            spent[i] += time.perf_counter() - t0
            done[i] += per_call[i]
    return [n / t for n, t in zip(done, spent, strict=True)]


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _matmul_flops(bf16: bool, seconds: float) -> float:
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    return _timed(lambda: a @ b, seconds, 1) * 2 * 2048**3


def prepare(case: tuple, ours: bool, bf16: bool) -> dict:
    """Networks, inputs, one synthesis call and one training step of `case`, and their FLOPs."""
    name, preset, g_ch, d_ch, hidden, classes, h, w = case
    g_widths, d_widths = preset_widths(preset, g_ch, d_ch)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    # layouts: channels-last with bf16; in fp32 (AVX2) it pays off in synthesis only
    synth_mem = CL if ours else NCHW
    train_mem = CL if ours and bf16 else NCHW
    g_kw, d_kw = {"fast_noise": ours}, {"fast_resample": ours}  # False: the published order
    synth_bs, train_bs = (16, 8) if h * w <= 64 * 64 else (4, 2)

    def nets(mem: torch.memory_format) -> tuple[OASISGenerator, UNetDiscriminator]:
        torch.manual_seed(0)
        G = OASISGenerator(classes, h, w, g_widths, 64, hidden).to(memory_format=mem)
        return G, UNetDiscriminator(classes, d_widths).to(memory_format=mem)

    def batch(bs: int, mem: torch.memory_format):
        mask = torch.randint(0, classes, (bs, h, w))
        label = F.one_hot(mask, classes).permute(0, 3, 1, 2).float().contiguous(memory_format=mem)
        real = (torch.rand(bs, 3, h, w) * 2 - 1).contiguous(memory_format=mem)
        return mask, label, real, torch.randn(bs, 64)

    # synthesis: the generator in eval mode, no autograd
    G_eval, _ = nets(synth_mem)
    G_eval.eval()

    def synth(label: torch.Tensor, z: torch.Tensor) -> None:
        with torch.no_grad(), ctx():
            G_eval(label, z, **g_kw)

    # training: one step of pipeline.train_images' loop, minus bookkeeping
    G, D = nets(train_mem)
    G.train()
    D.train()
    ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.999))

    def train_step(mask, label, real, z) -> None:
        D.requires_grad_(False)
        with ctx():
            loss_g = generator_loss(D(G(label, z, **g_kw), **d_kw), mask)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        D.requires_grad_(True)
        with torch.no_grad(), ctx():
            fake = G(label, z, **g_kw)
        with ctx():
            lr, lf = D(real, **d_kw), D(fake, **d_kw)
        mixed, mix = labelmix(real, fake, mask, classes)
        with ctx():
            lm = D(mixed.contiguous(memory_format=train_mem), **d_kw)
        loss_d = discriminator_loss(lr, lf, mask) + 10 * labelmix_loss(lm, lr, lf, mix)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), G.parameters(), strict=True):
                p_ema.lerp_(p, 1e-3)

    _, label1, _, z1 = batch(1, synth_mem)
    _, label, _, z = batch(synth_bs, synth_mem)
    one, data = batch(1, train_mem), batch(train_bs, train_mem)
    layout = "CL" if synth_mem == train_mem == CL else "NCHW" if synth_mem == NCHW else "CL/NCHW"
    return {
        "row": {
            "case": name,
            "mode": "ours" if ours else "fp32 ref",
            "precision": f"{'bf16' if bf16 else 'fp32'} {layout}",
            "g_gflop_img": _flops(lambda: synth(label1, z1)) / 1e9,
            "train_gflop_img": _flops(lambda: train_step(*one)) / 1e9,
        },
        "synth": (lambda: synth(label, z), synth_bs),
        "train": (lambda: train_step(*data), train_bs),
    }


def bench_case(case: tuple, bf16: bool, seconds: float) -> list[dict]:
    """Rows for ours and the fp32 reference, each workload timed with both in alternation."""
    runs = [prepare(case, True, bf16), prepare(case, False, False)]
    other = OtherLoad()
    for what in ("synth", "train"):
        fns, per_call = zip(*(r[what] for r in runs), strict=True)
        for r, speed in zip(runs, _timed_together(fns, seconds, per_call), strict=True):
            r["row"][f"{what}_img_s"] = speed
    return [{**r["row"], "other_cpu": other.share()} for r in runs]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="64x64 cases only, short timings")
    p.add_argument("--seconds", type=float, default=None, help="minimum timing per measurement")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = args.seconds or (2.0 if args.quick else 6.0)
    cases = [c for c in CASES if not args.quick or c[6] == 64]
    bf16 = cpu_has_fast_bf16()
    whole_run = OtherLoad()
    mm = {"fp32": _matmul_flops(False, seconds / 2)}
    if bf16:
        mm["bf16"] = _matmul_flops(True, seconds / 2)
    print(
        f"bf16 fast path: {'yes (AMX / AVX512-BF16)' if bf16 else 'no: this CPU lacks AMX and AVX512-BF16, ours runs in fp32'}; "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} cores"
    )

    rows = []
    for case in cases:
        for r in bench_case(case, bf16, seconds):
            peak = mm["bf16" if r["precision"].startswith("bf16") else "fp32"]
            # achieved FLOP/s of the FLOPs actually executed, as a fraction of a matmul's
            r["synth_frac_mm"] = r["g_gflop_img"] * 1e9 * r["synth_img_s"] / peak
            r["train_frac_mm"] = r["train_gflop_img"] * 1e9 * r["train_img_s"] / peak
            pub = PUBLISHED.get((case[1], case[2], case[6])) if r["mode"] == "ours" else None
            r["x_pub_synth"] = r["synth_img_s"] / pub[0] if pub else ""
            r["x_pub_train"] = r["train_img_s"] / pub[1] if pub else ""
            rows.append(r)
            print(
                f"{r['case']:>20} {r['mode']:>8} ({r['precision']}): synthesis "
                f"{r['synth_img_s']:.3g} img/s, training {r['train_img_s']:.3g} img/s",
                flush=True,
            )
    # ours against the fp32 reference, measured in this run
    for r in rows:
        ref = next(x for x in rows if x["case"] == r["case"] and x["mode"] == "fp32 ref")
        r["x_ref_synth"] = r["synth_img_s"] / ref["synth_img_s"]
        r["x_ref_train"] = r["train_img_s"] / ref["train_img_s"]

    # the targets: ours vs the published implementation at the paper-preset sizes
    published = []
    for case in cases:
        pub = PUBLISHED.get((case[1], case[2], case[6]))
        if pub is None:
            continue
        ours = next(x for x in rows if x["case"] == case[0] and x["mode"] == "ours")
        ref = next(x for x in rows if x["case"] == case[0] and x["mode"] == "fp32 ref")
        for what, i, key in (("synthesis", 0, "synth_img_s"), ("training", 1, "train_img_s")):
            published.append(
                {
                    "case": case[0],
                    "what": what,
                    "published_img_s": pub[i],
                    "ours_img_s": ours[key],
                    "ours_vs_published": ours[key] / pub[i],
                    "target": TARGET[i],
                    "met": ours[key] / pub[i] >= TARGET[i],
                    "fp32_ref_vs_published": ref[key] / pub[i],
                }
            )

    other = whole_run.share()
    print()
    print(" ".join(f"matmul 2048^2 {k}: {v / 1e12:.3f} TFLOP/s" for k, v in mm.items()))
    print_table(rows)
    print()
    print_table(published)
    if other is not None and other > 0.05:
        print(
            f"note: other processes took {other:.0%} of the CPU during this run: absolute "
            "timings are pessimistic (the ratios ours / fp32 ref were timed in alternation)"
        )
    path = save(
        "images",
        {
            "rows": rows,
            "published": published,
            "matmul_flop_s": mm,
            "bf16_fast_path": bf16,
            "other_cpu_share": other,
            "seconds": seconds,
            "quick": args.quick,
        },
    )
    print(f"wrote {path}")
    parts = [
        f"{p['case']} {p['what']} {p['ours_img_s']:.3g} img/s = {p['ours_vs_published']:.2f}x "
        f"published (target {p['target']:g}x{', met' if p['met'] else ''})"
        for p in published
    ]
    print(f"OASIS on CPU ({'bf16' if bf16 else 'fp32'}): " + "; ".join(parts))


if __name__ == "__main__":
    main()
