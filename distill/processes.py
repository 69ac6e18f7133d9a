"""The processes of a launch: this one alone, or those started by `accelerate launch` / torchrun (on one node or
several, over a file system they all see).

A cache build gives each process its share of the shards and lets the main one alone write the manifest; a
training run lets the main one alone open its run directory (`main_first`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from common.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    index: int = 0
    count: int = 1

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def share(self, items: list[T]) -> list[T]:
        """This process's share of `items` (every count-th one from its index): equal shares, whatever is left."""
        return items[self.index :: self.count]

    def wait(self) -> None:
        if self.count > 1:
            torch.distributed.barrier()

    def gather(self, value: T) -> list[T]:
        """`value` of every process, in process order."""
        if self.count == 1:
            return [value]
        values = [None] * self.count
        torch.distributed.all_gather_object(values, value)
        return values

    def main_first(self, prepare: Callable[[], T]) -> T:
        """`prepare()` on the main process while the others wait; its result, or its UserError, reaches every
        process, so none waits forever for a main process that gave up."""
        result, error = None, None
        if self.is_main:
            try:
                result = prepare()
            except UserError as exc:
                error = str(exc)
        if self.count > 1:
            shared = [result, error]
            torch.distributed.broadcast_object_list(shared, src=0)
            result, error = shared
        if error is not None:
            raise UserError(error)
        return result


def cpu_launch() -> bool:
    """Without a GPU, Accelerate joins a multi-process launch (torchrun, `accelerate launch`) only when told to run
    on CPU (gloo); otherwise every process would work alone on everything."""
    return not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched(cpu: bool) -> tuple[Processes, torch.device]:
    """The processes of this launch and this process's device."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu or cpu_launch())
    return Processes(state.process_index, state.num_processes), state.device
