"""free_port honours AKS_KMS_LAB_PORTS, the per-worker range that keeps parallel labs apart."""

from __future__ import annotations

import socket

import pytest

from aks_kms_lab import controlplane
from aks_kms_lab.controlplane import free_port


def test_ports_come_from_the_range_and_are_not_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AKS_KMS_LAB_PORTS", "24000-24019")
    monkeypatch.setattr(controlplane, "_handed_out", set())
    ports = [free_port() for _ in range(10)]
    assert all(24000 <= p <= 24019 for p in ports), ports
    assert len(set(ports)) == 10, ports


def _listening_with_a_free_neighbour() -> socket.socket:
    """A listening socket on a kernel-chosen port whose next port is free now. The kernel's choice
    alone is not enough: on a busy machine (the parallel suite) port + 1 is sometimes some other
    test's connection, and the range below would then have no free port at all."""
    for _ in range(50):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", busy.getsockname()[1] + 1))
            except OSError:
                busy.close()
                continue
        busy.listen()
        return busy
    raise AssertionError("no listening port with a free neighbour in 50 tries")


def test_a_port_someone_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with _listening_with_a_free_neighbour() as busy:
        port = busy.getsockname()[1]
        monkeypatch.setenv("AKS_KMS_LAB_PORTS", f"{port}-{port + 1}")
        monkeypatch.setattr(controlplane, "_handed_out", set())
        assert free_port() == port + 1


@pytest.mark.parametrize("value", ["20000", "b-c", "30000-20000", "80-90"])
def test_a_bad_range_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AKS_KMS_LAB_PORTS", value)
    with pytest.raises(ValueError, match="AKS_KMS_LAB_PORTS"):
        free_port()


def test_without_the_variable_the_kernel_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AKS_KMS_LAB_PORTS", raising=False)
    assert 0 < free_port() < 65536
