"""Helpers shared by benchmarks: result files, tables, peak memory of a child process, and how
much of the CPU other processes took while a benchmark ran."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = set(info.split())
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _first_cpu(info).get("model name") or platform.processor(),
        "cpu_family_model": _family_model(info),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # which bf16 path: a 2048^2 bf16 matmul on 2 cores ran at 2.5 TFLOP/s with AMX and 0.36 with
        # AVX512-BF16 only (bench.images on two machines of this workplace)
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1min": os.getloadavg()[0],
    }


def _family_model(cpuinfo: str) -> str:
    """x86 "family/model" of the first CPU ("26/2" is AMD Zen 5): the virtual machines here all say
    "AMD EPYC", yet one trained OASIS at 11.9 images/s (bf16) and another at 2.1 (fp32, AVX2 only)."""
    cpu = _first_cpu(cpuinfo)
    return f"{cpu.get('cpu family', '?')}/{cpu.get('model', '?')}"


def _first_cpu(cpuinfo: str) -> dict[str, str]:
    """/proc/cpuinfo's fields of the first CPU listed (the first value of each key)."""
    fields: dict[str, str] = {}
    for ln in cpuinfo.splitlines():
        key, _, value = ln.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def print_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))


def save(name: str, payload: dict[str, Any]) -> Path:
    from pipeline.io_utils import atomic_write_json

    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {"machine": machine(), **payload})
    return path


def previous_rows(name: str) -> list[dict[str, Any]]:
    """The rows of bench/results/NAME.json, or none: what `--append` merges into."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()).get("rows", []) if path.is_file() else []


def run_child(code: str) -> dict[str, Any]:
    """Run Python `code` in a fresh interpreter; it must print one JSON line last."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


PEAK_RSS = """
import resource
def peak_rss_mib():
    # the process itself and its (finished) worker processes; Linux reports KiB
    s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return s / 1024, c / 1024
"""


def _busy_jiffies() -> int | None:
    """CPU time of every process on the machine (/proc/stat, all cores), in clock ticks."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return user + nice + system + irq + softirq + steal


def _own_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class OtherLoad:
    """Share of the machine's CPU time that other processes used between start() and share().

    The load average cannot tell: it counts the benchmark's own threads and lags by minutes.
    Here the machine's busy time (/proc/stat) minus this process's (and its children's) CPU time,
    over wall time x cores: 0.0 = the benchmark had the machine alone, 0.5 = half of it was taken.
    """

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._t, self._busy, self._own = time.perf_counter(), _busy_jiffies(), _own_seconds()

    def share(self) -> float | None:
        busy = _busy_jiffies()
        if busy is None or self._busy is None:
            return None
        wall = (time.perf_counter() - self._t) * (os.cpu_count() or 1)
        other = (busy - self._busy) / os.sysconf("SC_CLK_TCK") - (_own_seconds() - self._own)
        return round(max(0.0, other) / wall, 3) if wall > 0 else None
