"""agent.sources.nodeio against the sysfs fixture tree tests/fixtures/sys and a fake psutil."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from agent.sources.nodeio import IB_COUNTER_UNIT_BYTES, NodeIo

SYS = Path(__file__).resolve().parents[2] / "fixtures" / "sys"
ALL_FIELDS = (
    "ib_tx_bytes_per_s",
    "ib_rx_bytes_per_s",
    "net_tx_bytes_per_s",
    "net_rx_bytes_per_s",
    "disk_read_bytes_per_s",
    "disk_write_bytes_per_s",
)


class NetIo(NamedTuple):
    bytes_sent: int
    bytes_recv: int


class DiskIo(NamedTuple):
    read_bytes: int
    write_bytes: int


class FakePsutil:
    """The two psutil calls NodeIo makes, with counters the test moves forward."""

    def __init__(self) -> None:
        self.nics = {"eth0": NetIo(1_000, 2_000), "lo": NetIo(10**9, 10**9), "veth1a2b3c": NetIo(10**9, 10**9)}
        self.disks = {"nvme0n1": DiskIo(5_000, 6_000), "loop0": DiskIo(10**9, 10**9), "dm-0": DiskIo(10**9, 10**9)}

    def net_io_counters(self, pernic: bool = False) -> dict[str, NetIo]:
        assert pernic, "NodeIo must ask per NIC, to leave loopback and veth out"
        return dict(self.nics)

    def disk_io_counters(self, perdisk: bool = False) -> dict[str, DiskIo]:
        assert perdisk, "NodeIo must ask per disk, to leave partitions, dm and loop out"
        return dict(self.disks)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    shutil.copytree(SYS, root)
    return root


def _set_ib(root: Path, tx_units: int, rx_units: int) -> None:
    counters = root / "class/infiniband/mlx5_0/ports/1/counters"
    (counters / "port_xmit_data").write_text(f"{tx_units}\n")
    (counters / "port_rcv_data").write_text(f"{rx_units}\n")


def test_first_sample_has_no_rates() -> None:
    io = NodeIo(SYS, psutil_module=FakePsutil(), clock=Clock())
    sample, reasons = io.sample()
    assert all(getattr(sample, f) is None for f in ALL_FIELDS), f"first sample must have no rates: {sample}"
    assert reasons == dict.fromkeys(ALL_FIELDS, "first_sample")


def test_rates_from_counter_deltas(sysfs: Path) -> None:
    ps, clock = FakePsutil(), Clock()
    io = NodeIo(sysfs, psutil_module=ps, clock=clock)
    io.sample()
    clock.now += 2.0
    _set_ib(sysfs, 1_000_000 + 500, 2_000_000 + 250)  # counters are in units of 4 bytes
    ps.nics = {"eth0": NetIo(1_000 + 400, 2_000 + 800), "lo": NetIo(0, 0), "veth1a2b3c": NetIo(2 * 10**9, 0)}
    ps.disks = {"nvme0n1": DiskIo(5_000 + 1_000, 6_000 + 3_000), "loop0": DiskIo(0, 0), "dm-0": DiskIo(2 * 10**9, 0)}
    sample, reasons = io.sample()
    assert reasons == {}, f"every rate should be known on the second sample: {reasons}"
    assert sample.ib_tx_bytes_per_s == 500 * IB_COUNTER_UNIT_BYTES / 2.0, "port_xmit_data counts 4-byte units"
    assert sample.ib_rx_bytes_per_s == 250 * 4 / 2.0
    assert sample.net_tx_bytes_per_s == 200.0, "only eth0 (has class/net/eth0/device) may count; not lo, not veth"
    assert sample.net_rx_bytes_per_s == 400.0
    assert sample.disk_read_bytes_per_s == 500.0, "only nvme0n1 (has block/nvme0n1/device) may count"
    assert sample.disk_write_bytes_per_s == 1_500.0


def test_counter_going_backwards_is_a_reset_not_a_negative_rate(sysfs: Path) -> None:
    clock = Clock()
    io = NodeIo(sysfs, psutil_module=FakePsutil(), clock=clock)
    io.sample()
    clock.now += 1.0
    _set_ib(sysfs, 10, 10)  # driver reload
    sample, reasons = io.sample()
    assert sample.ib_tx_bytes_per_s is None and reasons["ib_tx_bytes_per_s"] == "counter_reset"
    assert sample.net_tx_bytes_per_s == 0.0, "unchanged counters are a rate of 0, which is a measurement"


def test_no_infiniband(sysfs: Path) -> None:
    shutil.rmtree(sysfs / "class" / "infiniband")
    clock = Clock()
    io = NodeIo(sysfs, psutil_module=FakePsutil(), clock=clock)
    io.sample()
    clock.now += 1.0
    sample, reasons = io.sample()
    assert sample.ib_tx_bytes_per_s is None and sample.ib_rx_bytes_per_s is None
    assert reasons == {"ib_tx_bytes_per_s": "no_infiniband", "ib_rx_bytes_per_s": "no_infiniband"}


def test_unreadable_ib_counter(sysfs: Path) -> None:
    (sysfs / "class/infiniband/mlx5_0/ports/1/counters/port_rcv_data").write_text("garbage\n")
    sample, reasons = NodeIo(sysfs, psutil_module=FakePsutil(), clock=Clock()).sample()
    assert reasons["ib_rx_bytes_per_s"] == "read_error" and sample.ib_rx_bytes_per_s is None


def test_zero_interval(sysfs: Path) -> None:
    io = NodeIo(sysfs, psutil_module=FakePsutil(), clock=Clock())  # the clock never moves
    io.sample()
    _, reasons = io.sample()
    assert set(reasons.values()) == {"zero_interval"}, reasons


def test_real_psutil_on_this_machine() -> None:
    pytest.importorskip("psutil")
    io = NodeIo("/sys")
    io.sample()
    sample, reasons = io.sample()
    for f in ("net_tx_bytes_per_s", "disk_read_bytes_per_s"):
        v = getattr(sample, f)
        assert (v is None) == (f in reasons), f"{f}={v} but reason={reasons.get(f)}: None and a reason go together"
        assert v is None or v >= 0.0
