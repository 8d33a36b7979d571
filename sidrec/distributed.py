"""Data-parallel training over several processes: torchrun starts them, torch's DistributedDataParallel syncs them.

One process per GPU (or per CPU worker, gloo backend). Every process holds the whole model and the whole training
set; each step, the seeded global batch is split across the processes and DDP averages the gradients, so a run
on N processes follows the single-process run step for step (up to float summation order). Only the main
process (rank 0) writes files; evaluation interleaves the users across processes and gathers every ranking. The joint
schedules (``sidrec.training.schedules``) do without DDP: ``gather_shards`` hands every process the whole batch's
recommender outputs so that each computes the whole batch's loss, and ``average_gradients`` syncs whichever
parameters train in the current phase.

Launch on one machine (the two lines are equivalent)::

    sidrec run beauty --nproc 4
    torchrun --standalone --nproc_per_node 4 -m sidrec run beauty

Across machines, run on every node (R = 0 .. nodes - 1, HOST = the address of node 0)::

    torchrun --nnodes 2 --node_rank R --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \
        -m sidrec run beauty

Without torchrun's environment (``WORLD_SIZE`` unset or 1) every helper here is a no-op for one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

EXIT_CODE_ENV = "SIDREC_EXIT_CODE_FILE"  # set by ``launch``: where rank 0 leaves its exit code


def world_size() -> int:
    """Number of training processes (1 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's index in 0 .. world_size() - 1 (torchrun's RANK; 0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the process that writes files and logs (rank 0)."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) when started with WORLD_SIZE > 1.

    Args:
        device: the configured training device; on CUDA each process takes the GPU ``LOCAL_RANK``.

    Returns:
        The device this process trains on (``cuda:LOCAL_RANK`` under torchrun with CUDA, else ``device``).

    Example:
        >>> device = init_from_env(torch.device("cpu"))  # a no-op outside torchrun
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op for one process)."""
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def shard(n: int, of_rank: int | None = None) -> range:
    """This process's contiguous share of ``n`` items: sizes differ by at most one, lower ranks larger first.

    Args:
        n: number of items to split.
        of_rank: the share of that process instead (default: this one).

    Example:
        >>> shard(10)  # one process; on rank 1 of 3 it is range(4, 7)
        range(0, 10)
    """
    world, r = world_size(), rank() if of_rank is None else of_rank
    size, extra = divmod(n, world)
    start = r * size + min(r, extra)
    return range(start, start + size + (r < extra))


def interleave(n: int, of_rank: int | None = None) -> range:
    """This process's every ``world_size()``-th of ``n`` items, from its rank on: sizes differ by at most one.

    Over items sorted by cost (e.g. users by history length) every process gets the same mix of costs, which
    contiguous ``shard`` slices do not give.

    Args:
        n: number of items to split.
        of_rank: the share of that process instead (default: this one).

    Example:
        >>> interleave(10)  # one process; on rank 1 of 3 it is range(1, 10, 3)
        range(0, 10)
    """
    world, r = world_size(), rank() if of_rank is None else of_rank
    return range(r, n, world)


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenate every process's ``rows`` (n_r, ...) in rank order, on every process (exact, no averaging)."""
    if world_size() == 1:
        return rows
    parts: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(parts, rows)
    return np.concatenate(parts)


class _GatherShards(torch.autograd.Function):
    """``gather_shards`` with a gradient: each process's rows get ``world_size()`` times their own gradient.

    That is the exact backward of the all-gather under the contract of ``gather_shards``: every process computes
    the same function of the gathered rows, so each holds the same gradient for them and the true backward (sum
    over processes of their gradient for one's rows) is the local gradient times the number of processes. No
    communication is needed; ``average_gradients`` then divides by it again.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, n: int) -> torch.Tensor:
        world = world_size()
        parts = [shard(n, r) for r in range(world)]
        padded = local.new_zeros((len(parts[0]), *local.shape[1:]))  # all_gather needs equal sizes; rank 0's is max
        padded[: len(local)] = local
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        ctx.rows = parts[rank()]
        return torch.cat([g[: len(p)] for g, p in zip(gathered, parts, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad[ctx.rows.start : ctx.rows.stop] * world_size(), None


def gather_shards(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every process's rows of a ``shard(n)`` split, back in order as (n, ...), differentiably.

    Contract: every process must compute the same function of the result (e.g. the loss of the whole batch);
    gradients then reach each process's own rows exactly once ``average_gradients`` has run.

    Args:
        local: (len(shard(n)), ...) this process's rows, float.
        n: the number of rows over all processes.

    Example:
        >>> x = torch.arange(4.0)
        >>> rows = shard(len(x))
        >>> gather_shards(2 * x[rows.start : rows.stop], len(x))  # on every process; here one
        tensor([0., 2., 4., 6.])
    """
    if world_size() == 1:
        return local
    return _GatherShards.apply(local, n)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over the processes (in place; no-op for one process).

    A parameter that got no gradient in any process keeps ``grad = None`` (so the optimiser skips it, as in one
    process); one that got a gradient somewhere counts as zero where it did not. One flat all-reduce per call.

    Example:
        >>> loss.backward(); average_gradients([p for p in model.parameters() if p.requires_grad])  # doctest: +SKIP
    """
    if world_size() == 1 or not params:
        return
    device = params[0].device
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)  # (P,)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params]
                     + [has])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, got in zip(params, (flat[-len(params) :] > 0).tolist(), strict=True):
        if got:
            p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
        offset += p.numel()


def broadcast_from_main(tensors: list[torch.Tensor]) -> None:
    """Overwrite ``tensors`` in every process with rank 0's values, in place (no-op for one process)."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src=0)


@contextmanager
def same_random_draws(seed: int | None, device: torch.device) -> Iterator[None]:
    """Inside, torch's RNG of the CPU and ``device`` restarts from ``seed``; afterwards both go on where they were.

    Every process (and a single-process run) then draws the same numbers inside, whatever each drew before (e.g.
    dropout on shards of different sizes). ``seed=None``: a no-op, the current streams are used.

    Example:
        >>> with same_random_draws(1234, torch.device("cpu")):
        ...     noise = torch.rand(3)  # the same in every process
    """
    if seed is None:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """Average of a tensor over the processes (the tensor itself for one process)."""
    if world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / world_size()


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (so that all take the same branch)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when several processes train, else ``module`` itself."""
    if world_size() == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m sidrec ARGV`` in ``nproc`` processes on this machine through torchrun.

    Returns rank 0's exit code (e.g. 3: time budget reached), which the workers hand over through a file
    (``worker_exit``) because torchrun reports any non-zero worker exit as a crash; torchrun's own code when it
    fails.

    Example:
        >>> launch(2, ["run", "ml-100k-demo", "--quiet"])  # doctest: +SKIP
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sidrec", *argv]
    with tempfile.TemporaryDirectory() as tmp:
        code_file = Path(tmp) / "exit_code"
        rc = subprocess.run(cmd, check=False, env={**os.environ, EXIT_CODE_ENV: str(code_file)}).returncode
        return int(code_file.read_text()) if rc == 0 and code_file.exists() else rc


def worker_exit(code: int) -> int:
    """The exit code this process should return: ``code``, except in workers started by ``launch``.

    There rank 0 writes ``code`` for the launcher and every worker returns 0.
    """
    path = os.environ.get(EXIT_CODE_ENV)
    if path is None or world_size() == 1:
        return code
    if is_main():
        Path(path).write_text(str(code))
    return 0
