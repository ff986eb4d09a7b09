"""The one check that a device name exists on this machine, before a model is built or a file is read.

Without it `--device cuda` on a CPU-only machine surfaces deep inside loading (as a "corrupt
safetensors file", because pinned memory needs CUDA) or as a raw torch traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .errors import ConfigError


def check_device(device) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", "mps", a torch.device) as a torch.device; a ConfigError when
    the name is malformed or the device is absent."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {str(device)!r}", hint="use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU",
                              hint="use --device cpu (device='cpu' in Python)")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"device {str(device)!r} asked for, but torch sees {count} CUDA GPU(s) "
                              f"(cuda:0 to cuda:{count - 1})", hint="pick one of those, or --device cpu")
    elif parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {str(device)!r} asked for, but MPS is not available",
                          hint="use --device cpu (device='cpu' in Python)")
    elif parsed.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"device {str(device)!r} is not supported", hint="use cpu, cuda, cuda:N or mps")
    return parsed


def cpu_info(field: str) -> Optional[str]:
    """The value of `field` ("vendor_id", "model name", "flags") for the first CPU in /proc/cpuinfo;
    None where there is no such file (not Linux) or no such field."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == field:
            return value.strip()
    return None


HUGE_PAGE = 2 << 20


def huge_page_buffer(nbytes: int) -> Optional[torch.Tensor]:
    """`nbytes` of zeroed CPU memory (a uint8 tensor whose start is 2 MB aligned) that Linux backs with
    transparent huge pages, or None where it cannot (not Linux, no MADV_HUGEPAGE). Huge pages help
    tensors that are read whole and often, such as the weights a decode step streams: one TLB entry
    covers 2 MB instead of 4 KB (decoding llama-6x512 ran about 5% faster on an AMD EPYC). The memory
    lives as long as any view of the tensor does. Where the kernel's THP setting is `never` the memory
    still works, with ordinary pages."""
    import mmap

    if nbytes <= 0 or not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    whole = torch.frombuffer(region, dtype=torch.uint8)   # holds `region` until the last view goes
    start = -whole.data_ptr() % HUGE_PAGE
    return whole[start:start + nbytes]

