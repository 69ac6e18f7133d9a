"""The processes of a cache build: this one alone, or those started by `accelerate launch` / torchrun (on one
node or several, over a file system they all see).

Each process computes its share of the shards; only the main one writes the manifest, so the manifest has one
writer however many processes build.
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


def launched(cpu: bool) -> tuple[Processes, torch.device]:
    """The processes of this launch and this process's device. Without a GPU, Accelerate joins a multi-process
    launch only when told to run on CPU (gloo); otherwise every process would build the whole cache alone."""
    from accelerate import PartialState

    state = PartialState(cpu=cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1))
    return Processes(state.process_index, state.num_processes), state.device
