"""Multi-process training: ``launch`` (torch.multiprocessing or torchrun) and small comm helpers.

One process per GPU (NCCL) or per CPU worker (gloo). ``SOLVER.IMS_PER_BATCH`` is the total
batch over all processes; gradients are averaged by DistributedDataParallel; only the main
process (global rank 0) writes files.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pcna_seg.errors import ConfigError, PcnaSegError

logger = logging.getLogger(__name__)

_LOCAL_RANK = 0
_LOCAL_SIZE = 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    return _LOCAL_RANK


def is_main_process() -> bool:
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (no-op when not distributed)."""
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Gather a picklable object from every process; returns one entry per rank."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send ``obj`` from rank ``src`` to every process and return it."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_all(seed: int) -> int:
    """Seed python, numpy and torch in every process with ``seed + rank``; returns ``seed``.

    A negative ``seed`` (config ``SEED`` < 0) is drawn once on the main process, logged and
    shared, so every process and every loader of a run agree on it.
    """
    if seed < 0:
        seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        if is_main_process():
            logger.info("SEED < 0: drew seed %d", seed)
    seed = int(broadcast_object(seed))
    mine = seed + get_rank()
    random.seed(mine)
    np.random.seed(mine % 2**32)
    torch.manual_seed(mine)
    return seed


def resolve_device(name: str) -> torch.device:
    """``MODEL.DEVICE`` → torch.device; "auto" picks cuda when available; the local rank picks the GPU."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"MODEL.DEVICE {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"MODEL.DEVICE is {name!r} but CUDA is not available; use MODEL.DEVICE cpu or auto"
            )
        if dev.index is None:
            return torch.device("cuda", _LOCAL_RANK % max(torch.cuda.device_count(), 1))
    return dev


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    errors: Any,
) -> None:
    global _LOCAL_RANK, _LOCAL_SIZE
    _LOCAL_RANK, _LOCAL_SIZE = local_rank, num_per_machine
    rank = machine_rank * num_per_machine + local_rank
    backend = _backend()
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timedelta(minutes=30)
    )
    try:
        synchronize()
        main_func(*args)
        gc.collect()  # DDP reducers and their pending gloo work go while the group still exists
        synchronize()  # every rank is done before any tears the group down (gloo aborts otherwise)
    except PcnaSegError as exc:  # pass the one-line message to the parent
        errors.put(str(exc))
        raise SystemExit(1) from None
    except OSError as exc:  # a path that cannot be written: one line too
        from pcna_seg.cli_utils import describe_os_error

        errors.put(describe_os_error(exc))
        raise SystemExit(1) from None
    finally:
        if is_distributed():
            dist.destroy_process_group()


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: tuple = (),
) -> Any:
    """Run ``main_func(*args)`` in ``num_gpus_per_machine × num_machines`` processes.

    - Started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment): the
      process group is set up from the environment and ``main_func`` runs in this process.
    - World size 1: ``main_func`` runs in this process, no process group.
    - Otherwise processes are spawned with torch.multiprocessing; NCCL when CUDA is available,
      gloo on CPU (``num_gpus_per_machine`` then means CPU processes). ``dist_url`` "auto"
      picks a free local port (single machine only).

    A PcnaSegError raised in a worker is re-raised here with its one-line message.
    """
    global _LOCAL_RANK, _LOCAL_SIZE
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ConfigError(
            f"--num-gpus and --num-machines must be >= 1, got {num_gpus_per_machine} and {num_machines}"
        )
    if not 0 <= machine_rank < num_machines:
        raise ConfigError(f"--machine-rank must be in [0, {num_machines - 1}], got {machine_rank}")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        _LOCAL_RANK = int(os.environ.get("LOCAL_RANK", 0))
        _LOCAL_SIZE = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if not is_distributed():
            backend = _backend()
            if backend == "nccl":
                torch.cuda.set_device(_LOCAL_RANK)
            dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
        logger.info("torchrun: rank %d of %d (local rank %d)", get_rank(), get_world_size(), _LOCAL_RANK)
        return main_func(*args)
    world_size = num_gpus_per_machine * num_machines
    if world_size == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise PcnaSegError("--dist-url auto works on one machine only; give tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    try:
        mp.start_processes(
            _worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, errors),
            daemon=False,
            start_method="spawn",
        )
    except mp.ProcessExitedException:
        if not errors.empty():
            raise PcnaSegError(errors.get()) from None
        raise
    return None
