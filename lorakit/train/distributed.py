"""The training processes' side of a multi-process run: who is rank 0, waiting for each other, one decision for all.

accelerate (through torchrun) starts the processes and sets WORLD_SIZE / RANK / LOCAL_RANK; the trainer's own
accelerator does the distributed work (DDP/FSDP/DeepSpeed wrapping, data sharding, gradient averaging). lorakit only
keeps its own side consistent: rank 0 alone writes the run folder, every decision that must be the same everywhere
(fresh or resume, which checkpoint, padding-free or not) is taken on rank 0 and broadcast, and caches that several
processes would build at once (the built-in model, tokenized data) are built by rank 0 first.

With one process every helper here is a no-op, so the single-process path is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from lorakit.train.strategies import launched_plan

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place in the run, from the launcher's environment (torch-free)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def start(device: str) -> None:
    """Join the process group before anything else talks to the other processes.

    accelerate's state is one per process: the `cpu` flag given here must be the trainer's (`use_cpu` on the CPU),
    or accelerate would settle on a single-process state and every process would train alone.
    """
    if not world().distributed:
        return
    from accelerate import PartialState

    PartialState(cpu=device != "cuda")


def barrier() -> None:
    if world().distributed:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` computed on rank 0 and the same value handed to every process (it must be picklable).

    If rank 0 fails, it exits and the launcher stops the other processes, which are waiting here.
    """
    if not world().distributed:
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [fn() if world().is_main else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (building caches), the others after it, reading what it built."""
    if not world().distributed:
        yield
        return
    from accelerate import PartialState

    with PartialState().main_process_first():
        yield


def stop_requested(local: bool) -> bool:
    """Whether any process wants to stop now (Ctrl-C reaches each at a slightly different moment): all processes
    must end at the same step, or the ones still training wait forever for the others' gradients."""
    if not world().distributed:
        return local
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    flag = torch.tensor([1 if local else 0], device=PartialState().device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def full_state_dict(trainer) -> dict[str, Any] | None:
    """The whole (unsharded) state dict of a model FSDP or ZeRO-3 shards, gathered with every process taking part
    (the trainer's accelerator knows how); None where each process holds the whole model anyway."""
    if not world().distributed or not launched_plan(world().size).shards_weights:
        return None
    return trainer.accelerator.get_state_dict(trainer.model_wrapped)
