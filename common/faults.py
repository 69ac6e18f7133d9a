"""Deterministic crash points for the crash-safety tests.

`TIPSDISTILL_CRASH_AT=NAME:N` makes the process SIGKILL itself the moment it reaches point NAME for the
N-th time (for example right after a cache shard is recorded), so a test interrupts a run exactly where it
means to, however fast the machine. Unset, a crash point costs one environment lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "TIPSDISTILL_CRASH_AT"


def crash_point(name: str, count: int) -> None:
    if os.environ.get(ENV) == f"{name}:{count}":
        os.kill(os.getpid(), signal.SIGKILL)
