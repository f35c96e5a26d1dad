"""Devices the residency manager runs on: CPU (exact checks), CUDA (real), simulated."""

from resbench.devices.base import Device, Ledger, Transfer, UnitKey

__all__ = ["Device", "Ledger", "Transfer", "UnitKey"]
