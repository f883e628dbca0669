"""Tensor parallelism inside the serving process: every GPU works on every token.

transformers shards a model by its `tp_plan` (`from_pretrained(distributed_config=DistributedConfig(tp_size=N))`,
read in transformers/distributed/) only when `torch.distributed` is initialised with one process per device, and
every rank must then run each forward pass in lockstep (the row-wise layers all-reduce). The app is one process
serving Gradio, so it becomes rank 0 and starts ranks 1..N-1 as child processes; each child loads its shard and
then loops: woken by rank 0 (a queue: an idle wait must not be a collective, which would time out), it receives
the generation request by a broadcast and calls `model.generate` with it, so all ranks generate the same tokens. Rank 0
returns them (and streams them, a streamer runs on rank 0 only).

Every rank must make the same number of forward passes, or a collective waits for a rank that finished. So every rank
seeds its sampler with the same seed per request (drawn from rank 0's generator: a seeded reply stays reproducible),
and rank 0's own stopping criteria (a Stop button's event, which cannot be sent to another process) decide for all:
each step, `_RankZeroStops` broadcasts rank 0's answer, one small collective a token.

torch.distributed has one default process group per process, so a process holds at most one group at a time.
"""

from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .errors import QuantError

BACKENDS = ("gloo", "nccl")
"""gloo for CPU tensors, nccl for CUDA tensors. transformers picks the device from the accelerator it finds
(`torch._C._get_accelerator()`), so the backend must match it: nccl where CUDA is present, gloo otherwise."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_ONLY_RANK_0 = ("streamer", "stopping_criteria")
"""Generation arguments that stay on rank 0: the others generate the same tokens and need no one to read them; rank
0's stopping criteria are answered for every rank by `_RankZeroStops`."""


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _init(rank: int, world_size: int, init_file: str, backend: str, timeout_s: float) -> None:
    """Join the group. On GPUs its CPU tensors go over gloo and its CUDA tensors over nccl ("cpu:gloo,cuda:nccl"):
    the requests and the ranks' answers (object collectives) then stay on the CPU, where nccl would copy them to
    the calling thread's current CUDA device (rank 0 generates on the app's threads) and wait for the GPU; the
    all-reduces of the forward pass and the per-step stop broadcast are CUDA tensors, on nccl."""
    if backend == "nccl":
        torch.cuda.set_device(rank)
    import torch.distributed as dist

    dist.init_process_group("cpu:gloo,cuda:nccl" if backend == "nccl" else backend,
                            init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=torch.device("cuda", rank) if backend == "nccl" else None)


@dataclass(frozen=True)
class Checkpoint:
    """What every rank loads: the same files, revision and rules as the app's own load (the token only travels to
    the worker processes' memory, as it does to from_pretrained's)."""

    location: str
    dtype: str = "bfloat16"
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    trust_remote_code: bool = False
    attn_implementation: str | None = None


def _load(checkpoint: Checkpoint, world_size: int):
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    model = AutoModelForCausalLM.from_pretrained(
        checkpoint.location, dtype=_DTYPES[checkpoint.dtype], revision=checkpoint.revision, token=checkpoint.token,
        trust_remote_code=checkpoint.trust_remote_code, distributed_config=DistributedConfig(tp_size=world_size),
        **({"attn_implementation": checkpoint.attn_implementation} if checkpoint.attn_implementation else {}))
    return model.eval()


class _RankZeroStops(StoppingCriteria):
    """A stopping criterion on every rank that answers what rank 0's own criteria answer (None on the other ranks),
    so that all ranks end `generate` at the same step."""

    def __init__(self, criteria) -> None:
        self.criteria = criteria

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        import torch.distributed as dist

        if self.criteria is not None:
            done = self.criteria(input_ids, scores, **kwargs).to(torch.uint8)
        else:
            done = torch.zeros(input_ids.shape[0], dtype=torch.uint8, device=input_ids.device)
        dist.broadcast(done, src=0)
        return done.bool()


def _digest(ids: torch.Tensor | None) -> str | None:
    """A short fingerprint of a rank's output ids: the ranks compare them after every request."""
    import hashlib

    return None if ids is None else hashlib.sha1(ids.numpy().tobytes()).hexdigest()


def _run(model, request: dict, criteria=None) -> tuple[Any, str | None]:
    """One generation on this rank: (output ids on the CPU, None) or (None, the error). `criteria`: rank 0's own
    stopping criteria, where the request says rank 0 decides when to stop."""
    try:
        kwargs = dict(request)
        seed = kwargs.pop("_seed", None)
        if kwargs.pop("_rank_zero_stops", False):
            kwargs["stopping_criteria"] = StoppingCriteriaList([_RankZeroStops(criteria)])
        for key in ("input_ids", "attention_mask"):
            if isinstance(kwargs.get(key), torch.Tensor):
                kwargs[key] = kwargs[key].to(model.device)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = model.generate(**kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences.cpu(), None
    except Exception as exc:  # reported to rank 0, which raises it; this rank waits for the next request
        return None, f"{type(exc).__name__}: {exc}"


def _wait_for_work(wake) -> bool:
    """Block until rank 0 says there is a request (True) or to stop (False), or rank 0's process is gone (False).

    Waiting is not a collective: a collective times out (the process group's timeout), and an idle app must not
    lose its workers after that long without a request."""
    import multiprocessing
    import queue

    parent = multiprocessing.parent_process()
    while True:
        try:
            return wake.get(timeout=1.0) == "go"
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return False


def _worker(rank: int, world_size: int, init_file: str, backend: str, timeout_s: float, checkpoint: Checkpoint,
            threads: int, started, wake) -> None:
    """A rank > 0: load the shard, then, each time rank 0 wakes it, generate what rank 0 broadcasts."""
    import faulthandler

    faulthandler.enable()  # a rank that nccl's watchdog aborts (a collective timed out) shows where it waited
    os.environ["LOCAL_RANK"] = str(rank)  # transformers binds the device from it (distributed/utils.py)
    if backend == "gloo":
        torch.set_num_threads(threads)
    import torch.distributed as dist

    import transformers  # noqa: F401 - an import error shows before rank 0 waits in the rendezvous

    started.set()
    _init(rank, world_size, init_file, backend, timeout_s)
    try:
        model, error = None, None
        try:
            model = _load(checkpoint, world_size)
        except Exception:
            error = traceback.format_exc(limit=3)
        status = [None] * world_size
        dist.all_gather_object(status, error)
        if any(status):
            return
        while _wait_for_work(wake):
            box = [None]
            dist.broadcast_object_list(box, src=0)
            out, error = _run(model, box[0])
            dist.all_gather_object([None] * world_size, (error, _digest(out)))
    finally:
        dist.destroy_process_group()


@dataclass
class TensorParallelGroup:
    """A model sharded over `world_size` ranks; this process is rank 0. One request at a time (`generate` holds
    a lock: the ranks must run the same forward passes in the same order)."""

    model: Any
    world_size: int
    backend: str
    workers: list = field(default_factory=list)
    wakes: list = field(default_factory=list)
    """One queue per worker: "go" before each broadcast request, "stop" at close."""
    init_file: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def _check_alive(self) -> None:
        if self._closed:
            raise QuantError("The tensor-parallel group is closed.", "Load the model again.")
        dead = [p.pid for p in self.workers if not p.is_alive()]
        if dead:
            self._teardown(graceful=False)
            raise QuantError(f"A tensor-parallel worker process ({dead}) has exited; the group is closed.",
                             "Load the model again.")

    def generate(self, **kwargs) -> torch.Tensor:
        """`model.generate` on every rank with the same arguments; returns rank 0's token ids (all ranks agree).

        Inputs longer than the model's positions are refused here, before any rank sees them; an error that
        `generate` raises on any rank is raised here, and the workers wait for the next request.
        """
        if self._closed:
            raise QuantError("The tensor-parallel group is closed.", "Load the model again.")
        input_ids = kwargs.get("input_ids")
        if not isinstance(input_ids, torch.Tensor):
            raise QuantError("A tensor-parallel generation needs input_ids as a tensor.")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        wanted = input_ids.shape[-1] + int(kwargs.get("max_new_tokens") or 0)
        if limit and wanted > limit:
            raise QuantError(f"The prompt and new tokens need {wanted} positions; the model has {limit}.",
                             "Shorten the prompt or ask for fewer new tokens.")
        criteria = kwargs.get("stopping_criteria")
        shared = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()
                  if k not in _ONLY_RANK_0}
        shared["_rank_zero_stops"] = bool(criteria)
        try:
            pickle.dumps(shared)
        except Exception as exc:  # refused before any worker is woken
            raise QuantError(f"A tensor-parallel request must be picklable to reach the workers ({exc}).") from None
        import torch.distributed as dist

        with self._lock:
            self._check_alive()
            # one seed for every rank, drawn from rank 0's generator (which a seeded reply has just seeded)
            shared["_seed"] = int(torch.randint(0, 2**62, (1,)))
            for wake in self.wakes:
                wake.put("go")
            dist.broadcast_object_list([shared], src=0)
            mine = {**shared, **{k: kwargs[k] for k in _ONLY_RANK_0 if k in kwargs and k != "stopping_criteria"}}
            out, error = _run(self.model, mine, criteria)
            status = [None] * self.world_size
            dist.all_gather_object(status, (error, _digest(out)))
        errors = [f"rank {rank}: {e}" for rank, (e, _) in enumerate(status) if e]
        if errors:
            raise QuantError(f"Generation failed ({'; '.join(errors)}).")
        if len({digest for _, digest in status}) > 1:  # every rank must have made the same tokens, or the slices
            raise QuantError("The tensor-parallel ranks generated different tokens; the reply is not used.",
                             "Report this with the model and settings; load the model on one GPU meanwhile.")
        return out

    def close(self, timeout_s: float = 30.0) -> None:
        """Tell the workers to stop, wait for them, destroy the process group. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            graceful = all(p.is_alive() for p in self.workers)
            for wake in self.wakes:
                wake.put("stop")
            self._teardown(graceful=graceful, timeout_s=timeout_s)

    def _teardown(self, graceful: bool, timeout_s: float = 30.0) -> None:
        import torch.distributed as dist

        self._closed = True
        for p in self.workers:
            p.join(timeout_s if graceful else 0)
            if p.is_alive():
                p.terminate()
                p.join(5)
        for wake in self.wakes:  # the workers have exited: nothing left to deliver
            wake.close()
            wake.cancel_join_thread()
        if dist.is_initialized():
            dist.destroy_process_group()
        self.model = None
        if self.init_file and os.path.exists(self.init_file):
            os.remove(self.init_file)


def start_group(checkpoint: Checkpoint | str, world_size: int, dtype: str = "bfloat16", backend: str | None = None,
                timeout_s: float = 600.0) -> TensorParallelGroup:
    """Load `checkpoint` (or a folder, in `dtype`) sharded over `world_size` ranks (this process and world_size-1
    children).

    `timeout_s` bounds the start and every collective (a worker that dies mid-load or mid-generation cannot hang
    the app forever); the workers wait for requests outside any collective, so an idle group lives on.
    """
    import torch.distributed as dist
    import torch.multiprocessing as mp

    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise QuantError(f"Unknown backend {backend!r}.", f"Use one of {', '.join(BACKENDS)}.")
    if isinstance(checkpoint, str):
        checkpoint = Checkpoint(checkpoint, dtype)
    if checkpoint.dtype not in _DTYPES:
        raise QuantError(f"Tensor parallelism runs in {', '.join(_DTYPES)}, not {checkpoint.dtype!r}.")
    if world_size < 2:
        raise QuantError("Tensor parallelism needs at least 2 ranks.")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise QuantError(f"Tensor parallelism over {world_size} GPUs, but {torch.cuda.device_count()} are here.")
    if dist.is_initialized():
        raise QuantError("This process already holds a tensor-parallel group.", "Unload that model first.")

    fd, init_file = tempfile.mkstemp(prefix="quant-tp-")
    os.close(fd)
    os.remove(init_file)  # the FileStore creates it; a stale file from an earlier group would confuse it
    threads = max(1, (os.cpu_count() or 1) // world_size)
    ctx = mp.get_context("spawn")
    started = [ctx.Event() for _ in range(1, world_size)]
    wakes = [ctx.Queue() for _ in range(1, world_size)]
    workers = [ctx.Process(target=_worker, daemon=True, name=f"quant-tp-rank{rank}",
                           args=(rank, world_size, init_file, backend, timeout_s, checkpoint, threads,
                                 started[rank - 1], wakes[rank - 1]))
               for rank in range(1, world_size)]
    for p in workers:
        p.start()
    group = TensorParallelGroup(model=None, world_size=world_size, backend=backend, workers=workers, wakes=wakes,
                                init_file=init_file)
    deadline = time.monotonic() + timeout_s
    while not all(e.is_set() for e in started):  # a worker that dies starting is told at once, not at the timeout
        dead = [p for p in workers if not p.is_alive()]
        if dead or time.monotonic() > deadline:
            group._teardown(graceful=False)
            what = f"exited with code {dead[0].exitcode}" if dead else f"did not start within {timeout_s:.0f} s"
            raise QuantError(f"A tensor-parallel worker {what}.",
                             "A script that starts a group needs an `if __name__ == \"__main__\":` guard "
                             "(the workers are spawned and import the main module).")
        time.sleep(0.05)
    try:
        _init(0, world_size, init_file, backend, timeout_s)
    except Exception as exc:
        group._teardown(graceful=False)
        raise QuantError(f"The tensor-parallel workers did not join ({exc}).") from None
    error = None
    try:
        group.model = _load(checkpoint, world_size)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    status = [None] * world_size
    dist.all_gather_object(status, error)
    if any(status):
        group._teardown(graceful=True)
        first = next(s for s in status if s)
        raise QuantError(f"Loading the model with tensor parallelism failed: {first.strip().splitlines()[-1]}")
    return group
