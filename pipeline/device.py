"""Device and precision: bf16 autocast where the hardware does it fast, fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True where the CPU computes bf16 natively (AMX or AVX512-BF16); else autocast is slower."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_fast_bf16()
    return False


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """bf16 autocast when `enabled` and supported; a no-op (fp32) otherwise."""
    if enabled and bf16_supported(device):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def use_channels_last(device: torch.device, enabled: bool = True) -> bool:
    """channels-last pays off with bf16 oneDNN kernels on CPU and tensor cores on GPU."""
    return enabled and bf16_supported(device)


def channels_last_or_cpu(device: torch.device, bf16: bool = True) -> bool:
    """channels-last where bf16 is fast, and on CPU in fp32 too, for networks whose fp32 CPU
    kernels are faster that way: OASIS synthesis (~19%, bench.images) and the segmenter (~10%,
    depthwise convs). OASIS and SemGAN training stay NCHW in fp32 (faster there)."""
    return use_channels_last(device, bf16) or device.type == "cpu"
