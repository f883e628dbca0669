"""Load a model in a mode and measure what it cost. The registry (quant.registry) decides when; this does how."""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, NamedTuple

import torch
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig,
                          PreTrainedModel)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
from transformers.utils import GENERATION_CONFIG_NAME

from . import awq_gemv
from .access import LocalFolders
from .attention import check_attention
from .errors import PlacementError, QuantError, UnsupportedModeError
from .families import layout_hint, loading_problems, names_text, unquantized_weights_note
from .fastpath import GenerationPath, configure_kernel_cache, eager_path, prepare_generation_path
from .kept import kept_groups
from .methods import Mode, QuantMethod, QuantOptions, check_mode, parse_mode
from .placement import (TENSOR_PARALLEL, cuda_device_count, parse_device_map, parse_max_memory, target_is_cuda,
                        tensor_parallel_ranks)
from .report import (
    LoadReport,
    MemorySnapshot,
    bytes_by_device,
    linear_layer_types,
    logical_parameter_count,
    memory_footprint,
)
from .settings import load_settings
from .source import ModelSource, resolve_source
from .weight_stream import checkpoint_files, default_threads, read_safetensors, safetensors_entries

log = logging.getLogger(__name__)

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class LoadRequest:
    """Everything that decides how a model is loaded. The token is not part of its identity and never shown."""

    model: str
    mode: Mode = Mode.BF16
    revision: str | None = None
    device_map: str = "auto"
    max_memory: str | None = None
    options: QuantOptions = field(default_factory=QuantOptions)
    attn_implementation: str | None = None
    token: str | None = field(default=None, repr=False, compare=False)
    owner: str | None = None
    """Who asked (a served app's visitor). A model that needs the token to be read stays theirs: the registry keeps
    this for such loads and drops it for public ones (quant.registry)."""
    folders: LocalFolders | None = field(default=None, compare=False)
    """Which local folders `model` may name (None: the CLI's rule, `access.cli_folders`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", parse_mode(self.mode))
        object.__setattr__(self, "model", self.model.strip())

    @property
    def key(self) -> str:
        """A stable id of this load: model, revision, mode, every option and the owner (never the token)."""
        identity = {k: v for k, v in self.__dict__.items() if k not in ("token", "folders")}
        identity["mode"] = self.mode.value
        identity["options"] = self.options.__dict__
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.model}@{self.revision or 'main'}:{self.mode.value}:{digest}"

    @property
    def label(self) -> str:
        return f"{self.model} [{self.mode.value}]"

    @property
    def method(self) -> QuantMethod:
        return self.mode.method


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer and the report of its load."""

    key: str
    request: LoadRequest
    source: ModelSource
    model: PreTrainedModel
    tokenizer: Any
    report: LoadReport
    path: GenerationPath = field(default_factory=lambda: eager_path("loaded for measuring, not for generation"))
    """How `generate` runs on it (compiled or eager), decided and warmed up by `attach_generation_path`."""
    group: Any = None
    """The quant.tensor_parallel.TensorParallelGroup of a model loaded with device_map=tensor_parallel (`model` is
    then rank 0's shard: every forward pass must run on all ranks, through `generate`)."""

    @property
    def label(self) -> str:
        return self.request.label

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device of the input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def method_refusal(self) -> str | None:
        """Why this model's quantization method cannot take the compiled decode path, or None."""
        return self.request.method.compile_refusal(self.request.options)

    @property
    def default_stream_reason(self) -> str | None:
        """Why this model's GPU work must stay on the GPU's default stream (QuantMethod.default_stream_reason)."""
        return self.request.method.default_stream_reason(self.request.options)

    def generate(self, **kwargs):
        """`model.generate`, on every rank of a tensor-parallel model."""
        return self.group.generate(**kwargs) if self.group is not None else self.model.generate(**kwargs)

    def refuse_tensor_parallel(self, what: str) -> None:
        """Refuse work that calls the model's forward directly: on a tensor-parallel model rank 0 would wait for
        the other ranks' part of every layer forever."""
        if self.group is not None:
            raise PlacementError(f"{what} is not run on a model loaded with tensor parallelism (its other ranks "
                                 "take part only in generation).",
                                 "Load the model on one GPU or split over GPUs (device_map auto) for this.")

    def close(self) -> None:
        """Free what generation prepared for this model (compiled graphs, static caches hold GPU memory of their
        own) and a tensor-parallel model's worker processes; the weights go when the last reference to this
        object does."""
        self.path.close()
        if self.group is not None:
            self.group.close()


def prefer_fast_sdpa_backends() -> None:
    """Keep PyTorch's SDPA off its cuDNN backend (QUANT_CUDNN_SDPA=1 allows it).

    cuDNN attention builds a new plan for every new key length, that is every decode step: on an H100 (torch 2.11,
    1B Llama shape, batch 1) HF generate decoded at 18.8 tok/s with it against 39.8 with eager attention
    (bench/sdpa_probe.py). The flash and memory-efficient backends have no such cost.
    """
    if torch.cuda.is_available() and os.environ.get("QUANT_CUDNN_SDPA") != "1":
        torch.backends.cuda.enable_cudnn_sdp(False)


def _model_class(source: ModelSource):
    return AutoModelForSeq2SeqLM if source.kind == "seq2seq" else AutoModelForCausalLM


_MODEL_MAPPINGS = {"causal": MODEL_FOR_CAUSAL_LM_MAPPING, "seq2seq": MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING}
"""The model class of a config, per kind of model (what the auto classes use; `.get` needs its default given)."""


def streamed_weights_device(source: ModelSource, kwargs: dict[str, Any], mode: str) -> str | None:
    """The one device a load's weights are streamed to by quant.weight_stream (QUANT_STREAM_WEIGHTS: a GPU by
    default, the CPU too when on), or None for transformers' own loading: only loads of an unquantized local
    safetensors checkpoint in the dtype its weights are stored in, onto one device: one named, or device_map auto
    where quant.planner puts every weight on one GPU (as transformers would; a model that needs several GPUs or the
    CPU too keeps transformers' placement). A dtype conversion would hold the whole state dict in both dtypes on the
    device at the end of the load (transformers converts tensor by tensor as it copies them)."""
    device_map = kwargs["device_map"]
    setting = load_settings().stream_weights
    if setting == "off" or not source.is_local or source.checkpoint_quantization:
        return None
    if setting == "auto" and not target_is_cuda(device_map):  # the CPU: transformers' mmap load is lazy there
        return None
    if "quantization_config" in kwargs or "max_memory" in kwargs:
        return None
    if kwargs["trust_remote_code"] and getattr(source.config, "auto_map", None):  # the repo's own model class
        return None
    if type(source.config) not in _MODEL_MAPPINGS.get(source.kind, {}):
        return None
    files = checkpoint_files(source.location)
    entries = [e for path in files for e in safetensors_entries(path)]
    if not files or not {e.dtype for e in entries if e.dtype.is_floating_point} <= {kwargs["dtype"]}:
        return None
    device = None
    if isinstance(device_map, dict) and list(device_map) == [""]:
        device = str(device_map[""])
    elif device_map == "auto":
        from .planner import plan_memory

        try:
            plan = plan_memory(source, "auto", modes=[mode])
        except Exception as error:  # noqa: BLE001 - a plan that cannot be made leaves the load to transformers
            log.info("Weights not streamed: no memory plan for %s (%s)", source.ref, error)
            return None
        device = plan.modes[0].only_gpu
    if device and torch.device(device).type == "cuda" and not _allocator_warmup_switch():
        # transformers' warm-up cannot be skipped: it would hold a second model's worth next to the streamed weights
        needed = 2 * sum(e.end - e.start for e in entries) + (3 << 29)
        if torch.cuda.mem_get_info(torch.device(device))[0] < needed:
            log.info("Weights not streamed: %s needs room for two copies on %s", source.ref, device)
            return None
    return device


_streamed_load = threading.local()


def _allocator_warmup_switch() -> bool:
    """Whether transformers' `caching_allocator_warmup` (which from_pretrained calls before it loads) can be skipped by
    a streamed load: it is wrapped once so that a thread inside `_no_allocator_warmup` skips it, and any other load
    keeps it. False where this transformers has no such function (the streamed load then needs room for two copies)."""
    import transformers.modeling_utils as modeling_utils

    original = getattr(modeling_utils, "caching_allocator_warmup", None)
    if original is None:
        return False
    if not getattr(original, "skipped_by_streamed_loads", False):
        @functools.wraps(original)
        def switched(*args, **kwargs):
            if getattr(_streamed_load, "active", False):
                return None
            return original(*args, **kwargs)

        switched.skipped_by_streamed_loads = True
        modeling_utils.caching_allocator_warmup = switched
    return True


@contextmanager
def _no_allocator_warmup() -> Iterator[None]:
    """from_pretrained in this thread without its allocator warm-up: it reserves a block the size of the model before
    loading, capped by the GPU's total memory rather than its free memory, so with the streamed weights already on the
    GPU it would hold the model twice at the peak (and fail on a GPU the model fills more than half of)."""
    _allocator_warmup_switch()
    _streamed_load.active = True
    try:
        yield
    finally:
        _streamed_load.active = False


def _from_pretrained(source: ModelSource, kwargs: dict[str, Any], mode: str) -> tuple[PreTrainedModel, dict, str]:
    """`from_pretrained(source.location)`, or where streamed_weights_device says so the model class's from_pretrained
    over the streamed state dict, with the checkpoint's generation config and name as from_pretrained(folder) sets
    them; and how the weights were read, for the load report."""
    device = streamed_weights_device(source, kwargs, mode)
    if device is None:
        model, loading_info = _model_class(source).from_pretrained(source.location, output_loading_info=True, **kwargs)
        return model, loading_info, "transformers' from_pretrained"
    started = time.perf_counter()
    threads = default_threads()
    state_dict = read_safetensors(checkpoint_files(source.location), device, threads=threads)
    gigabytes, seconds = sum(t.nbytes for t in state_dict.values()) / 1e9, time.perf_counter() - started
    read = (f"streamed by {threads} threads to {device}: {len(state_dict)} tensors, {gigabytes:.2f} GB in "
            f"{seconds:.2f} s")
    log.info("Streamed %d tensors (%.2f GB) of %s to %s in %.2f s", len(state_dict), gigabytes, source.ref, device,
             seconds)
    model_class = _MODEL_MAPPINGS[source.kind][type(source.config)]
    config = copy.deepcopy(source.config)  # from_pretrained sets dtype and attention on the config it is given
    streamed = {**{k: v for k, v in kwargs.items() if k not in ("revision", "token")}, "device_map": {"": device}}
    with _no_allocator_warmup():
        model, loading_info = model_class.from_pretrained(None, config=config, state_dict=state_dict,
                                                          output_loading_info=True, **streamed)
    if torch.device(device).type == "cuda" and not _allocator_warmup_switch():
        torch.cuda.empty_cache()  # the warm-up's block, where this transformers' warm-up could not be skipped
    model.config.name_or_path = model.name_or_path = source.location
    if os.path.isfile(os.path.join(source.location, GENERATION_CONFIG_NAME)):
        model.generation_config = GenerationConfig.from_pretrained(source.location)
    return model, loading_info, read


def load_tokenizer(source: ModelSource, token: str | None, trust_remote_code: bool):
    """The checkpoint's tokenizer; decoder-only models without a pad token get EOS as pad (needed for batches)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source.location, revision=source.revision, token=token, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError) as exc:
        raise QuantError(f"The tokenizer of {source.ref} cannot be loaded: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class Prepared(NamedTuple):
    """A load planned: every refusal is behind it, nothing is loaded yet."""

    source: ModelSource
    kwargs: dict[str, Any]
    """For `from_pretrained`."""
    warnings: list[str]
    options: QuantOptions
    """The request's options with the defaults that depend on the checkpoint filled in (the GPTQ kernel)."""
    on_cuda: bool


def prepare(request: LoadRequest) -> Prepared:
    """Resolve the source and build `from_pretrained` kwargs; every refusal happens here, before loading."""
    settings = load_settings()
    device_map = parse_device_map(request.device_map)
    max_memory = parse_max_memory(request.max_memory)
    on_cuda = target_is_cuda(device_map)
    source = resolve_source(request.model, revision=request.revision, token=request.token,
                            trust_remote_code=settings.trust_remote_code, folders=request.folders)
    method = request.method
    options = method.resolve(request.options, source.checkpoint_quantization, on_cuda)
    warnings = check_mode(request.mode, options, checkpoint_quantization=source.checkpoint_quantization, on_cuda=on_cuda)
    if getattr(source.config, "auto_map", None) and not settings.trust_remote_code:
        warnings.append(
            f"{request.model} ships its own modelling code (auto_map in its config); it is not run here: "
            f"transformers' built-in {source.architecture} is used, which may differ from what the authors intended."
        )
    if device_map == TENSOR_PARALLEL:
        _refuse_tensor_parallel(source, method, max_memory)
    elif not on_cuda:
        if max_memory and any(isinstance(k, int) for k in max_memory):
            raise PlacementError("max_memory names a GPU, but the model is placed on the CPU.")
        device_map = {"": "cpu"}
    kwargs: dict[str, Any] = {
        "dtype": method.dtype(options, on_cuda),
        "device_map": device_map,
        "revision": source.revision,
        "token": request.token,
        "trust_remote_code": settings.trust_remote_code,
    }
    if max_memory:
        kwargs["max_memory"] = max_memory
    qconfig = method.config(options, source.checkpoint_quantization, on_cuda)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    model_class = _MODEL_MAPPINGS[source.kind].get(type(source.config), None)
    attention = check_attention(request.attn_implementation, model_class, on_cuda=on_cuda, dtype=kwargs["dtype"])
    if attention:
        kwargs["attn_implementation"] = attention
    return Prepared(source, kwargs, warnings, options, on_cuda)


def _refuse_tensor_parallel(source: ModelSource, method: QuantMethod, max_memory) -> None:
    """device_map=tensor_parallel's refusals, in the words of the Model tab's placements (quant.planner)."""
    from .planner import tensor_parallel_refusal
    from .ui_strings import EN

    if max_memory:
        raise PlacementError("max_memory does not apply to tensor parallelism: every rank holds an equal slice of "
                             "every layer.", "Clear max_memory, or pick auto/balanced to place whole layers within "
                             "limits.")
    ranks = tensor_parallel_ranks()
    refusal = tensor_parallel_refusal(source, method, ranks, on_gpus=cuda_device_count() > 0)
    if refusal:
        reason, args = refusal
        if reason == "gpus_off":
            hint = ("Load it with device_map auto (split over the GPUs, compiled decode), or set "
                    "QUANT_TENSOR_PARALLEL_GPUS=on and restart to try tensor parallelism.")
        elif reason == "gpus":
            hint = ("On a machine without a GPU, QUANT_TENSOR_PARALLEL_CPU_RANKS=2 shards over CPU processes."
                    if not torch.cuda.is_available() else "Load it on one GPU (cuda:0) or with auto.")
        elif reason in ("quantized", "not_yet"):  # the mode, not the model
            hint = "Pick bf16 or fp16, or split the model over GPUs (device_map auto)."
        else:
            hint = "Split the model over GPUs instead (device_map auto)."
        raise PlacementError(f"Tensor parallelism cannot load {source.ref} in {method.name}: "
                             + EN[f"placements.refused.{reason}"].format(**args) + ".", hint)


def load_weights(request: LoadRequest, progress: ProgressFn | None = None,
                 prepared: Prepared | None = None) -> LoadedModel:
    """Load `request.model` in `request.mode` and measure the load; nothing is compiled (generation runs eager until
    `attach_generation_path`). `prepared`: the request's plan when the caller made it already (the registry plans
    before it decides whether to load).

    Raises QuantError (and its subclasses) with a message for the user; nothing stays allocated on failure.
    """
    progress = progress or (lambda fraction, message: None)
    configure_kernel_cache()  # before any kernel is built (gptqmodel builds Marlin/ExLlama on first load)
    progress(0.0, f"Reading the config of {request.model}")
    source, kwargs, warnings, options, on_cuda = prepared or prepare(request)
    method = request.method
    warnings = list(warnings)
    progress(0.1, "Loading the tokenizer")
    tokenizer = load_tokenizer(source, request.token, kwargs["trust_remote_code"])
    if kwargs["device_map"] == TENSOR_PARALLEL:
        return _load_tensor_parallel(request, source, kwargs, warnings, options, tokenizer, progress)

    gc.collect()
    before = MemorySnapshot.take()
    prefer_fast_sdpa_backends()
    progress(0.2, f"Loading weights in {request.mode.value}" + method.load_note(options))
    started = time.perf_counter()
    if on_cuda and method.runs_int4pack(options):
        awq_gemv.start_building()  # its compile (or its cached build's load) runs while the weights load
    method.before_load(options)
    try:
        model, loading_info, weights_read = _from_pretrained(source, kwargs, request.mode.value)
    except QuantError:  # a checkpoint file the streamed reader refused (malformed, cut short)
        _release()
        raise
    except torch.cuda.OutOfMemoryError:
        _release()
        raise PlacementError(
            f"{request.model} does not fit in GPU memory in {request.mode.value}.",
            "Unload other models, pick a smaller mode (nf4), or allow CPU offload with max_memory.",
        ) from None
    except ValueError as exc:
        _release()
        text = str(exc)
        if "dispatched on the CPU or the disk" in text or "does not fit" in text.lower():
            raise PlacementError(
                f"{request.model} does not fit in the memory given (max_memory {request.max_memory or 'unset'}).",
                "Raise max_memory, add cpu=<size> and turn on int8 fp32 CPU offload, or pick a smaller mode.",
            ) from None
        raise QuantError(f"Loading {request.model} in {request.mode.value} failed: {text.splitlines()[0]}") from None
    except (OSError, RuntimeError, ImportError, TypeError) as exc:
        _release()
        raise QuantError(
            f"Loading {request.model} in {request.mode.value} failed: {str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    try:
        warnings.extend(_check_loaded_weights(loading_info, request, source))
        warnings.extend(method.after_load(model, options, progress))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        load_seconds = time.perf_counter() - started
        if method.quantizes_weights:
            note = unquantized_weights_note(model, method.quantizes_what, skipped=options.int8_skip_modules)
            if note:
                warnings.append(note)
        _check_cpu_4bit_blocks(model, request)
    except QuantError:
        model = None  # the only reference: freed by _release
        _release()
        raise
    note = _single_sequence_generation(model)
    if note:
        warnings.append(note)
    progress(0.9, "Measuring")
    after = MemorySnapshot.take()

    device_map = getattr(model, "hf_device_map", None) or {"": str(next(model.parameters()).device)}
    if any(str(d) in ("cpu", "disk") for d in device_map.values()) and target_is_cuda(kwargs["device_map"]):
        warnings.append("Part of the model is offloaded to the CPU/disk: generation will be much slower.")
    quant = getattr(model.config, "quantization_config", None)
    report = LoadReport(
        model=request.model,
        revision=request.revision,
        kind=source.kind,
        architecture=type(model).__name__,
        mode=request.mode.value,
        dtype=str(model.dtype).removeprefix("torch."),
        attn_implementation=getattr(model.config, "_attn_implementation", None),
        parameters=logical_parameter_count(model),
        footprint_bytes=memory_footprint(model),
        bytes_by_device=bytes_by_device(model),
        gpu_allocated_bytes={d: after.gpu[d] - before.gpu.get(d, 0) for d in after.gpu},
        ram_before_bytes=before.rss,
        ram_after_bytes=after.rss,
        load_seconds=load_seconds,
        weights_read=weights_read,
        linear_layers=linear_layer_types(model),
        device_map={k: str(v) for k, v in device_map.items()},
        quantization=method.report_record(_jsonable(quant.to_dict() if hasattr(quant, "to_dict") else quant),
                                          options),
        warnings=warnings,
        kept=[group.to_dict(request.mode.value, kwargs["dtype"])
              for group in kept_groups(model, kwargs["dtype"], method.quantizes_weights,
                                       user_skips=options.int8_skip_modules)],
    )
    progress(0.91, "A first forward pass")
    try:
        _first_forward(model, tokenizer, source.kind)
    except (RuntimeError, ValueError, IndexError, TypeError, AttributeError) as exc:
        model = None  # the only reference: freed by _release
        _release()
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QuantError(f"{request.model} loaded in {request.mode.value} but cannot run: its first forward pass "
                         f"failed ({type(exc).__name__}: {first_line}).",
                         "Try another mode (bf16, int8) or GPTQ kernel.") from None
    progress(1.0, "Loaded")
    # The token served this load only: it is not kept with a model that every session can see.
    return LoadedModel(request.key, replace(request, token=None, options=options), source, model, tokenizer, report)


def _load_tensor_parallel(request: LoadRequest, source: ModelSource, kwargs: dict, warnings: list[str],
                          options: QuantOptions, tokenizer, progress: ProgressFn) -> LoadedModel:
    """device_map=tensor_parallel: the model sharded by its tp_plan over one process per GPU (quant.tensor_parallel;
    this process is rank 0), measured as far as rank 0 sees it: every rank holds a slice of the same size."""
    from .tensor_parallel import Checkpoint, start_group

    ranks = tensor_parallel_ranks()
    gc.collect()
    before = MemorySnapshot.take()
    progress(0.2, f"Loading weights in {request.mode.value}, sharded over {ranks} ranks (tensor parallel)")
    started = time.perf_counter()
    checkpoint = Checkpoint(source.location, dtype=str(kwargs["dtype"]).removeprefix("torch."),
                            revision=source.revision, token=request.token,
                            trust_remote_code=kwargs["trust_remote_code"],
                            attn_implementation=kwargs.get("attn_implementation"))
    group = start_group(checkpoint, ranks)
    try:
        progress(0.9, "A first generation on every rank")
        token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        ids = torch.tensor([[token if token is not None else 0]])
        group.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id)
        load_seconds = time.perf_counter() - started
        after = MemorySnapshot.take()
        model = group.model
        shard = memory_footprint(model)  # a DTensor counts its local slice: rank 0's share
        rank_devices = [f"cuda:{rank}" for rank in range(ranks)] if group.backend == "nccl" else ["cpu"] * ranks
        held = {device: shard * rank_devices.count(device) for device in rank_devices}
        devices = ", ".join(held)
        warnings.append(f"Tensor parallel over {ranks} ranks ({group.backend}) on {devices}: every layer is sliced "
                        f"over them, {shard / 2**20:,.1f} MiB on each rank. Generation runs on every rank in lockstep; "
                        "perplexity and the quality pass need the model in one process.")
        report = LoadReport(
            model=request.model, revision=request.revision, kind=source.kind, architecture=type(model).__name__,
            mode=request.mode.value, dtype=str(model.dtype).removeprefix("torch."),
            attn_implementation=getattr(model.config, "_attn_implementation", None),
            parameters=logical_parameter_count(model), footprint_bytes=shard * ranks, bytes_by_device=held,
            gpu_allocated_bytes={d: after.gpu[d] - before.gpu.get(d, 0) for d in after.gpu},
            ram_before_bytes=before.rss, ram_after_bytes=after.rss, load_seconds=load_seconds,
            linear_layers=linear_layer_types(model),
            device_map={"": f"tensor parallel: {ranks} ranks ({group.backend}) on {devices}"},
            quantization=None, warnings=warnings)
    except BaseException:
        group.close()  # its worker processes must not outlive a load that failed
        raise
    progress(1.0, "Loaded")
    return LoadedModel(request.key, replace(request, token=None, options=options), source, model, tokenizer, report,
                       group=group)


TENSOR_PARALLEL_EAGER = "tensor parallel: every rank runs generate in lockstep"


def _attach_tensor_parallel_path(loaded: LoadedModel, progress: ProgressFn) -> LoadedModel:
    """A tensor-parallel model: rank 0 hands each generation to the group (so its own path stays the eager one that
    runs `group.generate` on a thread), and every rank decodes compiled in lockstep where QUANT_FAST_GENERATION=all
    (not the default: not yet measured on two GPUs) and the group could slice the model into plain tensors."""
    group = loaded.group
    if load_settings().fast_generation == "all":
        progress(0.92, f"Compiling the decode step on every rank ({group.world_size})")
        described = group.prepare_compiled_path(loaded.tokenizer, model_context_length(loaded.model,
                                                                                      loaded.tokenizer))
        if group.path is not None:
            loaded.path = eager_path(f"{TENSOR_PARALLEL_EAGER}, each rank on its compiled path")
            loaded.report.generation_path = f"tensor parallel over {group.world_size} ranks, each: {described}"
            return loaded
        reason = f"{TENSOR_PARALLEL_EAGER}, eagerly: {described}"
    else:
        reason = f"{TENSOR_PARALLEL_EAGER}, eagerly (compiled over the ranks with QUANT_FAST_GENERATION=all)"
    loaded.path = eager_path(reason)
    loaded.report.generation_path = loaded.path.describe()
    return loaded


def attach_generation_path(loaded: LoadedModel, progress: ProgressFn | None = None) -> LoadedModel:
    """Decide how `generate` runs on a model loaded for serving, and compile and capture it now when that is the
    compiled path (minutes on a cold kernel cache); the report says which path and what it cost."""
    progress = progress or (lambda fraction, message: None)
    if loaded.group is not None:
        return _attach_tensor_parallel_path(loaded, progress)
    progress(0.92, "Preparing generation")
    path = prepare_generation_path(
        loaded.model, loaded.tokenizer, method_refusal=loaded.method_refusal, kind=loaded.source.kind,
        context=model_context_length(loaded.model, loaded.tokenizer),
        progress=lambda message: progress(0.95, message),
        compile_options=loaded.request.method.compile_options(loaded.request.options),
    )
    loaded.path = path
    report = loaded.report
    report.generation_path = path.describe()
    for note in (path.packed_gqa_note, path.decode_kernel_note):
        if note:
            report.warnings.append(f"Compiled decode: {note}.")
    report.compile_seconds = path.warmup_seconds
    report.static_cache_bytes = path.cache_bytes
    progress(1.0, "Ready")
    return loaded


def load_model(request: LoadRequest, progress: ProgressFn | None = None) -> LoadedModel:
    """A model ready to generate, for a caller that owns it alone (the CLI's chat and batch): load, then attach the
    generation path. A served app loads through the registry, which plans, makes room, and does these two steps."""
    return attach_generation_path(load_weights(request, progress), progress)


@contextmanager
def loaded_for_measuring(request: LoadRequest, progress: ProgressFn | None = None) -> Iterator[LoadedModel]:
    """A model loaded to be inspected or evaluated (quantize's checks, perplexity, reference log-probs): nothing is
    compiled, and everything it took is released when the block ends, also when it fails."""
    loaded = load_weights(request, progress)
    try:
        yield loaded
    finally:
        loaded.close()
        del loaded
        release_memory()


def _check_loaded_weights(loading_info: dict, request: LoadRequest, source: ModelSource) -> list[str]:
    """Weights the load did not fill from the checkpoint, from transformers' own loading info.

    A quantized checkpoint (GPTQ, serialized bitsandbytes) with weights missing (transformers initialises them with
    random values), unexpected (left unused) or of the wrong shape is refused: the model would generate garbage while
    every step reported success (gptqmodel saves Phi-3's gate_up_proj split and Mixtral's experts one by one, which
    transformers' classes do not have). An unquantized checkpoint loads with a warning naming them.
    """
    missing, unexpected, mismatched = loading_problems(loading_info)
    if not (missing or unexpected or mismatched):
        return []
    if source.checkpoint_quant_method:
        parts = []
        if missing:
            parts.append(f"{len(missing)} weights the model needs are MISSING from the checkpoint and would be random "
                         f"({names_text(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} weights in the checkpoint fit nowhere in the model "
                         f"({names_text(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} weights have the wrong shape ({names_text(mismatched)})")
        from importlib.metadata import version

        raise QuantError(
            f"{request.model} cannot be loaded in {request.mode.value}: " + "; ".join(parts) + "."
            + layout_hint(missing, unexpected),
            f"The checkpoint does not match transformers {version('transformers')}'s {source.architecture}. "
            "Quantize the original model with this tool (it refuses what it cannot save in a form that loads), or "
            "use a checkpoint made for this architecture.")
    warnings = []
    if missing:
        warnings.append(f"{len(missing)} weights are not in the checkpoint and were initialised with random values: "
                        f"{names_text(missing)}.")
    if unexpected:
        warnings.append(f"{len(unexpected)} weights in the checkpoint are not used by {source.architecture}: "
                        f"{names_text(unexpected)}.")
    if mismatched:
        warnings.append(f"{len(mismatched)} weights had the wrong shape and were initialised with random values: "
                        f"{names_text(mismatched)}.")
    return warnings


def _check_cpu_4bit_blocks(model: PreTrainedModel, request: LoadRequest) -> None:
    """Refuse a 4-bit model that bitsandbytes' CPU kernel cannot run, before its first call.

    On CPUs with AVX512-BF16, Linear4bit's first forward repacks its weight for the CPU kernel
    (bitsandbytes/functional.py, `_convert_weight_packed_for_cpu`), which reshapes the scales as [out, in // blocksize]
    and fails ("shape '[96, 1]' is invalid for input of size 144") on a layer whose input size is not a multiple of
    the block size (64). Most real checkpoints' sizes are multiples of 64; a layer that is not would otherwise fail at
    the first message.
    """
    bad = []
    for name, module in model.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if (type(module).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4") and state is not None
                and getattr(module, "support_avx512bf16_for_cpu", False) and module.weight.device.type == "cpu"
                and module.in_features % state.blocksize):
            bad.append((name, module.in_features, state.blocksize))
    if bad:
        raise UnsupportedModeError(
            f"bitsandbytes' 4-bit CPU kernel cannot run {len(bad)} layers of {request.model}: their input size is not "
            f"a multiple of its block size {bad[0][2]} ({names_text(name for name, _, _ in bad)}: "
            f"{sorted({n for _, n, _ in bad})}).",
            "Load it in int8, bf16 or fp32 here, or keep those layers unquantized (skip modules).")


_BEAM_KEYS = ("num_beams", "num_beam_groups")


def _single_sequence_generation(model: PreTrainedModel) -> str | None:
    """Drop beam search from the checkpoint's generation defaults, saying so; None when there was none.

    This tool generates one sequence per prompt, greedy or sampled (chat streams it token by token), and offers no
    beam search; but `generate` takes every default of the checkpoint's generation_config.json that a call leaves
    unset. Summarisers ship beams (facebook/bart-large-cnn: num_beams=4, min_length=56, no_repeat_ngram_size=3): chat
    then failed ("`streamer` cannot be used with beam search") and batches ran a 4-beam search while reporting
    greedy decoding. The checkpoint's other defaults (minimum length, n-gram blocking) stay, and are named.
    """
    config = getattr(model, "generation_config", None)
    if config is None or (getattr(config, "num_beams", 1) or 1) <= 1:
        return None
    beams = config.num_beams
    for key in _BEAM_KEYS:
        setattr(config, key, 1)
    defaults = type(config)()
    kept = {key: getattr(config, key, None) for key in ("min_length", "min_new_tokens", "no_repeat_ngram_size",
                                                         "repetition_penalty")}
    kept = {key: value for key, value in kept.items() if value is not None and value != getattr(defaults, key, None)}
    return (f"The checkpoint's generation config asks for beam search (num_beams={beams}); this tool generates one "
            "greedy or sampled sequence, so num_beams is 1 here."
            + (f" Its other defaults still apply: {', '.join(f'{k}={v}' for k, v in kept.items())}." if kept else ""))


def _first_forward(model: PreTrainedModel, tokenizer: Any, kind: str) -> None:
    """Run the model once on one token while it is still this load's alone.

    Some kernels prepare their weights on their first call and change them in place: bitsandbytes' 4-bit layers on
    the CPU repack each weight and delete its nested quantization state (`state2`) at their first forward. Two
    sessions' first messages arriving together on a fresh model raced there ("'QuantState' object has no attribute
    'state2'", seen with 20 sessions chatting at once). After this call every such preparation is done.
    """
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
    ids = torch.tensor([[token if token is not None else 0]], device=model.get_input_embeddings().weight.device)
    extra = {"decoder_input_ids": ids} if kind == "seq2seq" else {}
    with torch.inference_mode():
        model(input_ids=ids, **extra)


def model_context_length(model: PreTrainedModel, tokenizer: Any) -> int | None:
    """Tokens the model can attend to (prompt + reply), or None when it has no fixed limit."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 1_000_000 else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def freeze_startup_objects() -> None:
    """Leave the objects alive now (imported modules, a built UI) out of every later garbage collection.

    Each load and unload runs gc.collect() (before a load, for a true memory baseline; after an unload, to free a
    model's reference cycles), several times per load, and a full collection walks every object of the process:
    0.28 s for the ~570k objects of torch, transformers, gradio and the app imported (2-core CPU), most of a small
    model's load and unload. Frozen objects (Python's gc.freeze) are never walked again, so those collections walk
    only what was made since. Call once, after the imports and before any model loads: what is frozen is never
    collected, so a model alive at that moment would never be freed."""
    gc.collect()
    gc.freeze()


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def release_memory() -> None:
    """Give freed tensors back: Python garbage, then PyTorch's CUDA cache (so nvidia-smi sees it too)."""
    _release()

