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


class RowwiseLinear(torch.nn.Linear):
    """A row-wise slice of a linear layer with its all-reduce: this rank's partial product summed over the ranks,
    then the whole bias once. `torch.distributed.all_reduce` traces under torch.compile (dynamo turns it into a
    functional collective) and, on nccl, is recorded into a CUDA graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        out = torch.nn.functional.linear(x, self.weight)
        dist.all_reduce(out)
        return out if self.bias is None else out + self.bias


def localize(model) -> str | None:
    """Turn a model that transformers sharded by its tp_plan (DTensor parameters, hooks around each sharded layer)
    into plain local tensors and explicit all-reduces, which torch.compile and CUDA graphs take: a column-wise slice
    (Shard(0)) runs as a plain linear on its slice, a row-wise slice (Shard(1)) as `RowwiseLinear`, a replicated
    parameter becomes its local copy, and a sharded output head (or input embedding, tied to it) is gathered whole on
    every rank (the logits then need no gather, the embedding no masked lookup). Returns None when done, or why not
    (then nothing was changed: the DTensor model still runs eagerly, through transformers' hooks).
    Every rank must call it at the same point: gathering the head is a collective."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    ends = (model.get_output_embeddings(), model.get_input_embeddings())  # tied, they share one sharded weight
    plans = []
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not isinstance(param, DTensor):
                continue
            placements = tuple(param.placements)
            if all(isinstance(p, Replicate) for p in placements):
                plans.append((module, param_name, "local"))
            elif any(module is end for end in ends) and placements == (Shard(0),):
                plans.append((module, param_name, "whole"))
            elif isinstance(module, torch.nn.Linear) and param_name == "weight" and placements in ((Shard(0),),):
                plans.append((module, param_name, "local"))
            elif (isinstance(module, torch.nn.Linear) and param_name == "weight"
                  and placements in ((Shard(1),), (Shard(-1),))):
                plans.append((module, param_name, "rowwise"))
            elif isinstance(module, torch.nn.Linear) and param_name == "bias" and placements == (Shard(0),):
                plans.append((module, param_name, "local"))
            else:
                return f"{name}.{param_name} is sharded as {placements}, which the compiled path does not slice"
    handled = {id(module) for module, _, _ in plans}
    hooked = [(name, module) for name, module in model.named_modules()
              if getattr(module.__dict__.get("forward"), "__name__", "") == "tp_forward"]
    other = [name for name, module in hooked if id(module) not in handled]
    if other:  # a hook without sharded parameters does work of its own (an all-reduce of experts' outputs...)
        return f"{other[0]} runs a tensor-parallel step of its own, which the compiled path does not take"
    made: dict[int, torch.nn.Parameter] = {}  # a weight two modules share stays one tensor
    for module, param_name, how in plans:
        param = module._parameters[param_name]
        if id(param) not in made:
            tensor = param.full_tensor() if how == "whole" else param.to_local()
            made[id(param)] = torch.nn.Parameter(tensor, requires_grad=False)
        module._parameters[param_name] = made[id(param)]
        if how == "rowwise":
            module.__class__ = RowwiseLinear
    for _, module in hooked:  # transformers' hooks (an instance `forward`) wrap inputs and outputs as DTensors
        del module.__dict__["forward"]
    return None


def _digest(ids: torch.Tensor | None) -> str | None:
    """A short fingerprint of a rank's output ids: the ranks compare them after every request."""
    import hashlib

    return None if ids is None else hashlib.sha1(ids.numpy().tobytes()).hexdigest()


def _compiled_size(path, kwargs: dict) -> tuple[int | None, int | None]:
    """(batch size, prompt + new tokens) of the compiled loop this request runs on, or (None, None): eagerly. Rank 0
    decides and every rank follows (`_compiled` in the request): the ranks must run the same forward passes."""
    ids = kwargs.get("input_ids")
    if path is None or not path.compiled or not kwargs.get("max_new_tokens") or not isinstance(ids, torch.Tensor):
        return None, None
    total = ids.shape[1] + int(kwargs["max_new_tokens"])  # quant.generation.cache_tokens of a decoder-only model
    return (ids.shape[0], total) if _runs_compiled(path, ids.shape[0], total) else (None, None)


def _runs_compiled(path, batch_size: int, total_tokens: int) -> bool:
    """Whether `path` holds a loop of exactly this batch size with room for `total_tokens` (no padding up: the
    request came as it is to every rank)."""
    return path is not None and path.compiled_batch_size(batch_size, total_tokens) == batch_size


def _run(model, request: dict, criteria=None, path=None) -> tuple[Any, str | None]:
    """One generation on this rank: (output ids on the CPU, None) or (None, the error). `criteria`: rank 0's own
    stopping criteria, where the request says rank 0 decides when to stop. `path`: this rank's compiled generation
    path (quant.fastpath), taken where rank 0 says (`_compiled`: its loop's batch size and length)."""
    try:
        kwargs = dict(request)
        compiled, total = kwargs.pop("_compiled", (None, None))
        seed = kwargs.pop("_seed", None)
        if kwargs.pop("_rank_zero_stops", False):
            kwargs["stopping_criteria"] = StoppingCriteriaList([_RankZeroStops(criteria)])
        for key in ("input_ids", "attention_mask"):
            if isinstance(kwargs.get(key), torch.Tensor):
                kwargs[key] = kwargs[key].to(model.device)
        if seed is not None:
            torch.manual_seed(seed)
        if compiled is not None:
            if path is None:
                raise RuntimeError("rank 0 runs this request compiled, but this rank has no compiled path")
            out = path.submit(model.generate, kwargs, compiled, total).result()
        else:
            with torch.inference_mode():
                out = model.generate(**kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        return sequences.cpu(), None
    except Exception as exc:  # reported to rank 0, which raises it; this rank waits for the next request
        return None, f"{type(exc).__name__}: {exc}"


def _agreed(answers: list[tuple[bool, str]]) -> bool:
    """Whether every rank compiled the same path (the ranks then take it; otherwise all stay eager)."""
    return all(compiled for compiled, _ in answers) and len(set(answers)) == 1


def _prepare_path(model, tokenizer, context: int | None):
    """This rank's compiled generation path (quant.fastpath.prepare_generation_path: compiles and captures now, the
    same forward passes on every rank). Returns (path or None, what it is or the error)."""
    from .fastpath import prepare_generation_path

    try:
        path = prepare_generation_path(model, tokenizer, method_refusal=None, kind="causal", context=context)
        return path, (path.compiled, path.describe())
    except Exception as exc:  # noqa: BLE001 - every rank then stays eager
        return None, (False, f"compiling failed ({type(exc).__name__}: {exc})")


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
        local_reason = localize(model)
        if backend == "nccl":  # the compiled runner thread launches this rank's kernels: on its own GPU
            from .fastpath import compiled_runner

            compiled_runner().submit(torch.cuda.set_device, rank).result()
        path = None
        while _wait_for_work(wake):
            box = [None]
            dist.broadcast_object_list(box, src=0)
            request = box[0]
            if request.get("_command") == "prepare":
                answer = (False, local_reason)
                if local_reason is None:
                    from transformers import AutoTokenizer

                    tokenizer = AutoTokenizer.from_pretrained(
                        checkpoint.location, revision=checkpoint.revision, token=checkpoint.token,
                        trust_remote_code=checkpoint.trust_remote_code)
                    path, answer = _prepare_path(model, tokenizer, request.get("context"))
                answers = [None] * world_size
                dist.all_gather_object(answers, answer)
                if path is not None and not _agreed(answers):  # rank 0 decides the same from the same answers
                    path.close()
                    path = None
                continue
            out, error = _run(model, request, path=path)
            dist.all_gather_object([None] * world_size, (error, _digest(out)))
        if path is not None:
            path.close()
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
    local_reason: str | None = None
    """Why the ranks' model could not be turned into plain local slices (`localize`), or None: it was, and can take
    the compiled path."""
    path: Any = None
    """Rank 0's compiled generation path (`prepare_compiled_path`), or None: every rank runs `generate` eagerly."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: bool = False

    def compiled_for(self, batch_size: int, total_tokens: int) -> bool:
        """Whether a generation of this batch size and length runs on the ranks' compiled path."""
        return _runs_compiled(self.path, batch_size, total_tokens)

    def prepare_compiled_path(self, tokenizer, context: int | None) -> str:
        """Compile and capture the decode step on every rank at once (quant.fastpath, with this process's settings,
        which the workers inherited); every generation then takes it where it fits. Returns what rank 0's path is, or
        why the ranks stay eager (one rank's failure keeps all of them eager: they must run the same passes)."""
        import torch.distributed as dist

        with self._lock:
            self._check_alive()
            for wake in self.wakes:
                wake.put("go")
            dist.broadcast_object_list([{"_command": "prepare", "context": context}], src=0)
            path, answer = ((None, (False, self.local_reason)) if self.local_reason else
                            _prepare_path(self.model, tokenizer, context))
            answers = [None] * self.world_size
            dist.all_gather_object(answers, answer)
        if _agreed(answers):
            path.lockstep = True  # never recompiled on this rank alone (quant.fastpath: after another unload)
            self.path = path
            return answer[1]
        if path is not None:
            path.close()
        return next((text for compiled, text in answers if not compiled),
                    "the ranks prepared different paths: " + "; ".join(text for _, text in answers))

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
            shared["_compiled"] = _compiled_size(self.path, kwargs)
            for wake in self.wakes:
                wake.put("go")
            dist.broadcast_object_list([shared], src=0)
            mine = {**shared, **{k: kwargs[k] for k in _ONLY_RANK_0 if k in kwargs and k != "stopping_criteria"}}
            out, error = _run(self.model, mine, criteria, self.path)
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
            if self.path is not None:  # its graphs and caches hold memory of their own
                self.path.close()
                self.path = None
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
    group.local_reason = localize(group.model)  # every rank at once (gathering a sharded head is a collective)
    return group
