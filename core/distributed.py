"""Data-parallel plumbing of `rl.online` (SPMD: one process per rank under torchrun or the deepspeed
launcher; the same code runs with one rank, where every collective is the identity).

    ranks = Ranks.from_env()                  # rank, world, local_rank from the launcher's env vars
    mine  = ranks.shard(problems)             # this rank's contiguous share of the round's prompts
    lists = ranks.gather(obj)                 # every rank's obj, in rank order (all ranks call it)
    obj   = ranks.broadcast(obj)              # rank 0's obj on every rank
    plan  = minibatch_plan(lengths, ...)      # the global PPO minibatches, identical on every rank

Why prompts, not samples, are sharded: a GRPO group's baseline needs every member of the group, so a
prompt's n samples are generated, scored and advantaged on one rank. Why a contiguous shard: rank 0's
items then rank 1's is exactly the order one rank would see for the whole batch, so global decisions
(the judge budget, the minibatch permutation) are the same for 1 and N ranks.
The collectives are torch.distributed object collectives on a gloo group (also on GPUs, beside the NCCL
default group): they carry small Python lists (priorities, labels, lengths, metrics), never weights;
DeepSpeed all-reduces the gradients over NCCL. Every group waits trainer.dist_timeout_min minutes.
"""
from __future__ import annotations

import datetime
import atexit
import importlib
import os
import socket
import sys
from dataclasses import dataclass

import torch



def accept_local_rank_argument(argv: list[str] | None = None) -> None:
    """The deepspeed launcher appends `--local_rank=N` (or `--local_rank N`), which hydra refuses: move
    it into the LOCAL_RANK env var (what torchrun sets) and drop it from argv before hydra parses."""
    argv = sys.argv if argv is None else argv
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ["LOCAL_RANK"] = arg.split("=", 1)[1]
            del argv[i]
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ["LOCAL_RANK"] = argv[i + 1]
            del argv[i:i + 2]
        else:
            i += 1


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Ranks":
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_bounds(self, total: int) -> tuple[int, int]:
        if total % self.world:
            raise ValueError(f"task.prompts_per_round={total} is not a multiple of the {self.world} ranks: "
                             f"every rank must get the same number of prompts (GRPO groups are never split)")
        size = total // self.world
        return self.rank * size, (self.rank + 1) * size

    def shard(self, items: list) -> list:
        start, stop = self.shard_bounds(len(items))
        return items[start:stop]

    def seed(self, run_seed: int, *parts: int) -> int:
        """A per-rank seed derived from the run seed (e.g. a vLLM engine's sampling seed)."""
        return int(torch.randint(0, 2 ** 31 - 1, (1,),
                                 generator=torch.Generator().manual_seed(hash_seed(run_seed, self.rank, *parts))))

    # ------------------------------------------------------------------ collectives
    def _active(self) -> bool:
        return self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def gather(self, obj) -> list:
        """Every rank's `obj` on every rank, in rank order. Every rank must call it."""
        if self.world == 1:
            return [obj]
        self._require()
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=object_group())
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank. Every rank must call it."""
        if self.world == 1:
            return obj
        self._require()
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=object_group())
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            self._require()
            torch.distributed.barrier(group=object_group())

    def _require(self) -> None:
        if not self._active():
            raise RuntimeError(f"WORLD_SIZE={self.world} but torch.distributed is not initialised: "
                               "rl.online initialises it through DeepSpeed (trainer.deepspeed=true)")


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of a tuple is salted per process for str)."""
    value = 1469598103934665603
    for part in parts:
        value = ((value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return value


def minibatch_plan(lengths: list[list[int]], mini_batch_size: int, micro_batch_size: int, epochs: int,
                   generator: torch.Generator) -> list[dict]:
    """The PPO minibatches over all ranks' samples, the same on every rank.

    lengths[r][i]: completion length of rank r's sample i. Each epoch shuffles the global sample list
    (rank 0's samples, then rank 1's, ...: one rank's order for the whole batch) with `generator` and
    cuts it into minibatches of `mini_batch_size`, as a single process would. Per minibatch: `mine`
    (this rank's local indices, filled in by the caller's rank), `tokens` (the minibatch's completion
    tokens over all ranks: the loss is a token mean over the whole minibatch) and `micro_steps` (the
    most micro-batches any rank needs: every rank runs that many forward/backward passes, padding with
    zero-loss passes, so the gradient all-reduce and ZeRO-3's parameter gathers line up)."""
    owners = [(r, i) for r, rank_lengths in enumerate(lengths) for i in range(len(rank_lengths))]
    plan = []
    for _ in range(epochs):
        order = torch.randperm(len(owners), generator=generator).tolist()
        for start in range(0, len(order), mini_batch_size):
            members = [owners[j] for j in order[start:start + mini_batch_size]]
            per_rank = [[i for r, i in members if r == rank] for rank in range(len(lengths))]
            plan.append({"per_rank": per_rank, "tokens": sum(lengths[r][i] for r, i in members),
                         "micro_steps": max(-(-len(p) // micro_batch_size) for p in per_rank)})
    return plan


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def init_distributed(timeout_min: int = 120) -> None:
    """Initialise the default process group (once per process), every collective on it allowed
    `timeout_min` minutes (trainer.dist_timeout_min): NCCL's 10-minute default is shorter than a phase in
    which rank 0 alone works (judging: deadline x attempts; hashing or copying a checkpoint) while the
    others wait. Then the group the object collectives use (`object_group`): gloo, whatever the default
    backend, so lists of priorities, labels and metrics travel on the host and never occupy the NCCL
    communicator or its watchdog. Single process: defaults for the env vars DeepSpeed needs (else it
    looks for mpi4py), and skip the JIT build of the shared-memory comm op (gloo does not need it)."""
    import deepspeed
    global _OBJECT_GROUP
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = _free_port()
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if torch.distributed.is_initialized():
        return
    timeout = datetime.timedelta(minutes=timeout_min)
    backend = "gloo" if not torch.cuda.is_available() else "nccl"
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    atexit.register(_destroy_at_exit)
    if backend != "gloo" and torch.distributed.get_world_size() > 1:   # collective: every rank creates it
        _OBJECT_GROUP = torch.distributed.new_group(backend="gloo", timeout=timeout)


def _destroy_at_exit() -> None:
    """A process that exits with its process group alive can abort in the backend's teardown (seen: "terminate
    called without an active exception" after a clean run): destroy it first, as torch.distributed asks."""
    global _OBJECT_GROUP
    _OBJECT_GROUP = None
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


_OBJECT_GROUP = None   # None: the default group (already gloo, or one process)


def object_group():
    """The process group of the object collectives (Ranks.gather/broadcast/barrier): gloo (init_distributed)."""
    return _OBJECT_GROUP


def deepspeed_args(device: str):
    """`args` for deepspeed.initialize that keep a model on its configured GPU: DeepSpeed otherwise moves
    it to cuda:LOCAL_RANK whatever the config said (e.g. a PRM on cuda:1 next to a policy on cuda:0)."""
    from types import SimpleNamespace
    if device.startswith("cuda"):
        return SimpleNamespace(device_rank=torch.device(device).index or 0)
    return None

