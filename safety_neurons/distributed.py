"""Sharded collection over processes and machines with `torch.distributed` (launched by `torchrun`).

The method needs only sufficient statistics, and they merge exactly: per-group counts, means and M2 by
Chan et al.'s parallel formula, Gram matrices and token counts by addition, per-prompt rows by putting them
back in prompt order. So each rank runs the prompts of its own shard and the ranks combine:

    torchrun --nproc-per-node 2 -m safety_neurons.cli run --quick           # 2 processes, one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:29500 ...    # 2 machines × 8 GPUs

In a notebook or script the same call works without `torchrun` (one process: a plain collection):

    sn.distributed.init_from_env()        # no-op unless launched by torchrun
    collection = sn.collect_sharded(model, prompts, rows_at=[("mlp_in", 21)])
    if sn.distributed.is_main():
        edit = sn.fit_edit(model, prompts, sn.EditSpec.linear(layers=[21]), rows=collection)

Rank r takes prompts r, r + W, r + 2W, … (W = world size): deterministic, and balanced in length. The
statistics are reduced with two `all_reduce` calls (Σ n·mean, then Σ M2 + n·(mean − grand mean)²), Gram
matrices with one, rows with an `all_gather`; every rank ends with the same `Collection`, equal to one
process's up to float64 round-off. The backend is gloo on the CPU and NCCL on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from .activations import ActivationRows, ActivationStats, Collection, collect_activations
from .prompts import Prompt

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 (or the only process): the one that solves, evaluates and writes files."""
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group `torchrun` describes in the environment (WORLD_SIZE, RANK, MASTER_ADDR, …).

    A no-op returning False when not launched with more than one process, or already initialised. The backend
    defaults to NCCL when CUDA is available, else gloo; with NCCL each process takes GPU LOCAL_RANK.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return True


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank `rank`'s share: items rank, rank + world_size, … (every item in exactly one shard)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} is not in a world of size {world_size}")
    return list(items[rank::world_size])


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    dev = _comm_device()
    out = t.to(dev, copy=True)
    dist.all_reduce(out)
    return out.cpu()


def reduce_stats(stats: ActivationStats, groups: Sequence[tuple[str, str]]) -> ActivationStats:
    """Every rank's statistics merged (all ranks get the result), over `groups` in that order.

    mean = Σ nᵢ·meanᵢ / n and M2 = Σ (M2ᵢ + nᵢ·(meanᵢ − mean)²): Chan et al.'s parallel merge of all shards at
    once, as two sums; a rank without prompts of a group contributes nothing to it.
    """
    st = stats.reindexed(groups).to("cpu")
    count = _all_reduce(st.count)
    n = count.to(torch.float64).clamp(min=1)[:, None, None]
    mean = _all_reduce(st.mean * st.count.to(torch.float64)[:, None, None]) / n
    m2 = _all_reduce(st.m2 + st.count.to(torch.float64)[:, None, None] * (st.mean - mean) ** 2)
    return ActivationStats(st.site, st.position, list(st.layers), list(st.groups), count, mean, m2)


def _gather_rows(local: torch.Tensor, n_total: int) -> torch.Tensor:
    """Rows of every rank's strided shard, back in the order of the full prompt list."""
    w, dev = world_size(), _comm_device()
    n_max = -(-n_total // w)
    padded = torch.zeros(n_max, local.shape[-1], dtype=local.dtype, device=dev)
    padded[: len(local)] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.empty(n_total, local.shape[-1], dtype=local.dtype)
    for r, part in enumerate(parts):
        n_r = len(range(r, n_total, w))
        out[r::w] = part[:n_r].cpu()
    return out


def collect_sharded(model, prompts: Sequence[Prompt], **kwargs) -> Collection:
    """`collect_activations` with the prompts sharded over the ranks and the results combined on every rank.

    Takes the same keyword arguments. Without a process group (or with one rank) it is exactly
    `collect_activations(model, prompts, **kwargs)`. Every rank must call it with the same prompts and
    arguments; each runs only its shard.
    """
    if not is_distributed():
        return collect_activations(model, prompts, **kwargs)
    w, r = world_size(), rank()
    if len(prompts) < w:
        raise ValueError(f"collect_sharded: {len(prompts)} prompts cannot be shared by {w} ranks (fewer than one each)")
    mine = shard(prompts, r, w)
    if r != 0:
        kwargs["progress"] = False
    local = collect_activations(model, mine, **kwargs)
    groups = list(dict.fromkeys((p.lang, p.label) for p in prompts))
    stats = reduce_stats(local.stats, groups) if local.stats is not None else None
    rows = {key: _gather_rows(x, len(prompts)) for key, x in sorted(local.rows.rows.items())}
    grams = {key: _all_reduce(g) for key, g in sorted(local.gram.items())}
    n_tokens = int(_all_reduce(torch.tensor([local.n_tokens], dtype=torch.long))[0])
    return Collection(
        stats, ActivationRows(local.rows.position, list(prompts), rows), grams, n_tokens, local.gram_positions
    )
