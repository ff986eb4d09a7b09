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
