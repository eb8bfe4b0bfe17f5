"""``launch`` that also runs several CPU processes (gloo backend) when no GPU is present.

With CUDA available this defers to ``detectron2.engine.launch`` (NCCL, one process per GPU).
Without CUDA, ``num_processes`` workers are spawned on this machine and joined through
torch.distributed with the gloo backend, so ``--num-gpus N`` also works on a CPU-only machine
(for tests and small clusters; CPU data-parallel training is slow).
"""

import logging
import os
import socket
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as detectron2_launch
from detectron2.utils import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _free_local_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(main_func, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
           dist_url: str = "auto", args=(), timeout: timedelta = DEFAULT_TIMEOUT) -> None:
    """Run ``main_func(*args)`` in ``num_processes`` processes per machine.

    ``dist_url`` is the torch.distributed init URL (``tcp://HOST:PORT``) shared by all
    machines; ``"auto"`` picks a free port on 127.0.0.1 for a single-machine job.
    """
    if torch.cuda.is_available() or num_processes * num_machines <= 1:
        detectron2_launch(main_func, num_processes, num_machines=num_machines,
                          machine_rank=machine_rank, dist_url=dist_url, args=args,
                          timeout=timeout)
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto works for single-machine jobs only; give "
                             "tcp://HOST:PORT of machine 0.")
        dist_url = f"tcp://127.0.0.1:{_free_local_port()}"
    logger.info("No CUDA device: launching %d CPU processes per machine with the gloo backend.",
                num_processes)
    mp.spawn(_cpu_worker, nprocs=num_processes, daemon=False,
             args=(main_func, num_processes, num_machines, machine_rank, dist_url, args, timeout))


def _create_cpu_ddp_model(model, *, fp16_compression=False, **kwargs):
    """``create_ddp_model`` for CPU modules, which DDP accepts only without ``device_ids``."""
    if comm.get_world_size() == 1:
        return model
    kwargs.pop("device_ids", None)
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def _cpu_worker(local_rank, main_func, num_processes, num_machines, machine_rank, dist_url, args,
                timeout):
    world_size = num_processes * num_machines
    global_rank = machine_rank * num_processes + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                            rank=global_rank, timeout=timeout)
    for machine in range(num_machines):
        ranks = list(range(machine * num_processes, (machine + 1) * num_processes))
        group = dist.new_group(ranks)
        if machine == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group

    # DefaultTrainer wraps the model with create_ddp_model, which passes device_ids=[rank]. DDP
    # rejects that for CPU modules, so this process uses a CPU-aware version.
    from detectron2.engine import defaults

    defaults.create_ddp_model = _create_cpu_ddp_model
    torch.set_num_threads(max(1, torch.get_num_threads() // num_processes))
    comm.synchronize()
    try:
        main_func(*args)
        # Every rank waits until all of them have finished before the group is torn down.
        comm.synchronize()
    finally:
        dist.destroy_process_group()
    exit_worker_process()


def exit_worker_process() -> None:
    """End a spawned gloo worker that finished its work, skipping interpreter teardown.

    NOTE: with torch 2.14.1, a spawned process that used a gloo group sometimes aborts with
    SIGABRT ("terminate called without an active exception") during interpreter teardown.
    This was measured in about one run in twelve, after all work was written. ``mp.spawn``
    then reports the whole job as failed, so this function flushes logs and streams and
    leaves with ``os._exit(0)``. Call it only after every output is written and closed.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)
