"""openseason.device: the device-name check and the /proc/cpuinfo reader."""
from __future__ import annotations

from pathlib import Path

import pytest

from openseason import device


def test_cpu_info_reads_the_first_cpu_and_says_none_when_absent(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC: 9005\nflags\t\t: fpu avx2\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    real_path = Path
    monkeypatch.setattr(device, "Path", lambda p: fake if p == "/proc/cpuinfo" else real_path(p))
    assert device.cpu_info("vendor_id") == "AuthenticAMD"
    assert device.cpu_info("model name") == "AMD EPYC: 9005"     # a colon inside the value stays
    assert device.cpu_info("flags") == "fpu avx2"
    assert device.cpu_info("bogomips") is None
    monkeypatch.setattr(device, "Path", lambda p: tmp_path / "absent")
    assert device.cpu_info("vendor_id") is None


def test_check_device_names_what_is_wrong():
    with pytest.raises(device.ConfigError, match="unknown device 'gpu0'"):
        device.check_device("gpu0")
    assert device.check_device("cpu").type == "cpu"
