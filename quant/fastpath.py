"""The fast generation path: a static KV cache and a compiled, CUDA-graphed decode loop, prepared at load time.

Why: at batch 1, eager HF `generate` spends most of each token launching kernels from Python (an 8B Llama in fp16 on
an H100 decoded at 11% of its memory-bandwidth floor). This module decides where the compiled path is used, warms it
up while the model loads (never at a user's first message), and keeps the compiled state valid:

* Each warmed batch size owns a `decode.DecodeLoop` per static cache length (batch 1: the longest only): a
  `StaticCache`, fixed input buffers and the decode step, compiled with torch.compile (Inductor) and, on CUDA,
  captured as one CUDA graph. A call runs on the shortest cache that holds its prompt and reply. `generate` runs it as its
  `custom_generate` loop; decode.py says why that beats transformers' own compiled `generate`.
* Every compiled call of every model runs on one process-wide runner thread: the loops' buffers and graphs serve one
  call at a time, and concurrent sessions take turns.
* Unloading a compiled model drops its graphs and dynamo's compiled code (which dynamo would otherwise hand to the
  next model of the same shape); any other compiled model still loaded is compiled and captured again right then
  (from the on-disk kernel cache: seconds), so the unload pays for it rather than that model's next message.
* Compilation caches (Inductor, Triton, gptqmodel's kernel builds) go to QUANT_KERNEL_CACHE, so a restart does not
  pay again.
* Grouped-query models decode with `attention.packed_gqa_sdpa`: transformers' sdpa, compiled, would copy the whole
  static cache once per query head in every layer at every step.

A model split over GPUs (accelerate's device_map / max_memory) decodes in segments, one compiled call and CUDA graph
per device (quant.segments). Encoder-decoder models (T5, BART) take the same path through
seq2seq_decode.Seq2SeqDecodeLoop: the encoder runs eagerly once per call, the decoder step is compiled over a static
self-attention cache and a fixed cross-attention cache (that module says why not transformers' own static-cache
`generate`).

Where it is not supported (CPU, LLM.int8, a model offloaded to the CPU or disk, a split model whose structure is not
recognised, a split encoder-decoder model, a seq2seq family other than T5 and BART) or fails to compile, generation
stays on the eager path and says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers.generation import CompileConfig

from . import ragged
from .attention import restore_sdpa, use_decode_kernel, use_packed_gqa_decode
from .decode import DecodeLoop
from .fused_projections import fuse_projections, fusion_wanted, unfuse_projections
from .segments import SegmentedDecodeLoop, SegmentPlan, segment_plan
from .seq2seq_decode import Seq2SeqDecodeLoop, seq2seq_refusal
from .settings import Settings, load_settings

logger = logging.getLogger(__name__)

COMPILED = "static cache + torch.compile"
EAGER = "eager"


def configure_kernel_cache(settings: Settings | None = None) -> str:
    """Point Inductor, Triton and gptqmodel's JIT builds at QUANT_KERNEL_CACHE (unless already set); returns it."""
    root = (settings or load_settings()).kernel_cache
    defaults = _library_defaults()
    for variable, sub in (("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TRITON_CACHE_DIR", "triton"),
                          ("GPTQMODEL_TORCH_EXTENSIONS_DIR", "gptqmodel"), ("TORCH_EXTENSIONS_DIR", "torch_extensions")):
        if os.environ.get(variable) in (None, "", defaults.get(variable)):
            os.environ[variable] = os.path.join(root, sub)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        pass  # read-only home: compilation still works, it is just not kept
    return root


def _library_defaults() -> dict[str, str]:
    """Values libraries write into the environment themselves: torch stores its default Inductor cache folder
    (/tmp/torchinductor_<user>) in TORCHINDUCTOR_CACHE_DIR the first time it is asked (bitsandbytes' import does)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return {}
    return {"TORCHINDUCTOR_CACHE_DIR": default_cache_dir()}


def fast_path_refusal(*, method_refusal: str | None, kind: str, devices: set[str],
                      settings: Settings, segments_refusal: str | None = None,
                      model_refusal: str | None = None, quantized: bool = False) -> str | None:
    """Why the compiled path is not used for this model, or None when it is.

    QUANT_FAST_GENERATION: "auto" compiles on a GPU what was measured faster compiled (16/32-bit, nf4/fp4, GPTQ's
    torch, int4pack and Marlin kernels) through the compiled decode loop (decode.py), decoder-only and T5/BART
    (seq2seq_decode.py: greedy equal to eager on an H200, T5-large batch 128 2.8x eager in bf16, 3.3x in nf4), and a
    decoder-only model in 16/32-bit split over GPUs in segments (segments.py: its two-GPU tests passed on two H200s,
    8B bf16 at 0.98x one GPU's compiled rate, eager 0.13x; bench/results/multi-gpu-decode-paths.md); "all" also
    allows the CPU and a split model with `quantized` weights (segments have not been tested over two GPUs with
    them: a default must be a checked path); "off" never compiles.
    `method_refusal`: the quantization method's own reason (QuantMethod.compile_refusal);
    `model_refusal`: the architecture's (seq2seq_decode.seq2seq_refusal for encoder-decoder models).
    A model split over GPUs decodes in segments (segments.py); `segments_refusal`: why this model's structure cannot
    (`segment_plan`), for a split model or one that QUANT_DECODE_SEGMENTS cuts.
    """
    choice = settings.fast_generation
    if choice == "off":
        return "QUANT_FAST_GENERATION=off"
    if choice not in ("auto", "all"):
        return f"QUANT_FAST_GENERATION={choice!r} is not one of auto, all, off"
    if kind not in ("causal", "seq2seq"):
        return f"{kind} models use the eager path"
    if len(devices) > 1:
        split = f"the model is split over {', '.join(sorted(devices))}"
        if any(not device.startswith("cuda") for device in devices):
            return f"{split}: compiled decode needs every part of it on a GPU"
        if kind != "causal":
            return f"{split}: split decoding in segments is built for decoder-only models"
        if segments_refusal:
            return f"{split}: {segments_refusal}"
    elif segments_refusal:
        return f"QUANT_DECODE_SEGMENTS={settings.decode_segments}: {segments_refusal}"
    if next(iter(devices)).startswith("cpu") and choice != "all":
        return "CPU: compiling the decode step takes minutes there and gains little"
    if choice == "auto" and len(devices) > 1 and quantized:
        return ("the compiled segments of a model split over GPUs are tested over two GPUs in 16/32-bit only "
                "(QUANT_FAST_GENERATION=all uses them for quantized weights)")
    return model_refusal or method_refusal


_runner_guard = threading.Lock()
_runner: ThreadPoolExecutor | None = None


def compiled_runner() -> ThreadPoolExecutor:
    """The one thread that runs every compiled `generate` of the process (see the module's docstring for why)."""
    global _runner
    with _runner_guard:
        if _runner is None:
            _runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quant-compiled")
        return _runner


_batch_work = 0
"""Batch work queued or running on the runner thread: compiled batches' `generate` calls and batch sizes being
compiled for a job. A chat yields to it (`runner_busy_with_batches`)."""
_batch_work_guard = threading.Lock()


def _batch_work_started() -> None:
    global _batch_work
    with _batch_work_guard:
        _batch_work += 1


def _batch_work_ended(*_) -> None:
    global _batch_work
    with _batch_work_guard:
        _batch_work -= 1


def runner_busy_with_batches() -> bool:
    """Whether batch work holds the runner thread: a chat queued behind it would wait for a whole compiled chunk
    (seconds at batch 128) or an on-demand compile before its first token, so it runs eagerly instead (issue 26: a
    chat during a batch job gets its first token within 1 s)."""
    with _batch_work_guard:
        return _batch_work > 0


def _forget_compiled_code() -> None:
    """Drop every dynamo-compiled frame (runs on the runner thread): dynamo would otherwise hand the next model of
    the same shape the frame compiled for this one, and keep what it references alive."""
    torch._dynamo.reset()


def _allow_more_recompiles() -> None:
    """One compiled entry per loaded model and batch size: dynamo's default limit of 8 is reached with a few models.
    Runs on the runner thread, where every compiled call runs: dynamo's and Inductor's settings are per thread (torch
    2.14 keeps a setting in a ContextVar), so one made on the loading thread would not reach it."""
    config = torch._dynamo.config
    config.recompile_limit = max(getattr(config, "recompile_limit", 8), 64)


@dataclass(eq=False)
class GenerationPath:
    """How `generate` runs on one loaded model: compiled (static cache, runner thread) or eager."""

    compiled: bool
    reason: str = ""
    """Why eager (empty when compiled)."""
    cache_lengths: tuple[int, ...] = ()
    """Static cache lengths, ascending: batch 1 has a loop with the longest, larger batches one per length."""
    batch_sizes: tuple[int, ...] = ()
    warmup_seconds: float = 0.0
    cache_bytes: int = 0
    compile_config: CompileConfig | None = field(default=None, repr=False)
    _loops: dict[tuple[int, int], DecodeLoop] = field(default_factory=dict, repr=False)
    """(batch size, cache length) -> its decode loop."""
    _open: bool = field(default=False, repr=False)
    _model: weakref.ref | None = field(default=None, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    packed_gqa: bool = False
    """Decode attention folds query heads onto their KV heads instead of repeating the cache (see attention.py)."""
    packed_gqa_note: str = ""
    """Why a grouped-query model's compiled decode stays on transformers' sdpa (empty otherwise)."""
    decode_kernel: bool = False
    """Packed decode attends with quant.decode_attention's Triton kernel (QUANT_DECODE_ATTENTION=triton, the default
    on a GPU in 16-bit where the kernel passes its check)."""
    decode_kernel_note: str = ""
    """Why it does not, on a GPU in 16-bit or where the operator asked for it by name (empty otherwise)."""
    fused_projections: str = ""
    """Which sibling projections run as one matmul (quant.fused_projections), or why none could; empty: not tried."""
    segments: SegmentPlan | None = None
    """Where a split model's decode step runs, one compiled call per segment (segments.py); None: one call."""
    regional: bool = False
    """The decoder layer is compiled once for all layers (QUANT_COMPILE_REGIONS=layers; segments.py)."""
    regional_note: str = ""
    """Why the whole forward is compiled in one graph though QUANT_COMPILE_REGIONS=layers (empty otherwise)."""
    _adding: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """One batch size compiled at a time for batch jobs (add_batch_size)."""
    lockstep: bool = False
    """A tensor-parallel rank's path (quant.tensor_parallel): its forward passes must run on every rank at once, so it
    is never warmed up again on one rank alone; after another model's unload it goes eager instead."""
    job_cache_lengths: dict[int, int] = field(default_factory=dict)
    """Batch size compiled for a batch job -> the one cache length it was compiled with (its job's tokens, rounded
    up to JOB_CACHE_STEP): its only loop, instead of one per QUANT_STATIC_CACHE_TOKENS length."""
    _prefill: Any = field(default=None, repr=False)
    """The batches' grouped prefill through one compiled decoder layer (quant.ragged.CompiledPrefill,
    QUANT_COMPILE_PREFILL=on), built with the first batch size above 1; dropped with the loops."""
    prefill_note: str = ""
    """Why the batches' prefill stays eager although QUANT_COMPILE_PREFILL=on (empty otherwise)."""
    prefill_seconds: float = 0.0
    """How long building the compiled prefill took (its compile and its check), part of its batch size's compile."""

    def describe(self) -> str:
        """One line for the UI and reports: which path, and for what (or why not)."""
        if self.compiled:
            sizes = ", ".join(map(str, self.batch_sizes))
            packed = ("; grouped-query decode without repeated KV" if self.packed_gqa else
                      f"; {self.packed_gqa_note}" if self.packed_gqa_note else "")
            packed += "; decode attention reading only the attended cache slots (Triton)" if self.decode_kernel else ""
            split = self.segments is not None and len(self.segments.segments) > 1
            graphs = ("" if not self.captured else "; one CUDA graph per segment" if split else
                      "; one CUDA graph per step")
            lengths = (f"up to {self.max_cache_len} tokens" if len(self.cache_lengths) == 1 else
                       f"caches of {', '.join(map(str, self.cache_lengths))} tokens")
            lengths += "".join(f"; batch {size} for a job: {length} tokens"
                               for size, length in sorted(self.job_cache_lengths.items()))
            segments = f"; {self.segments.describe()}" if split else ""
            regions = ("; one compiled decoder layer for all layers" if self.regional else
                       f"; whole model compiled ({self.regional_note})" if self.regional_note else "")
            fused = f"; {self.fused_projections}" if self.fused_projections else ""
            prefill = (f"; batch prefill through one compiled decoder layer (compiled and checked in "
                       f"{self.prefill_seconds:.1f} s)" if self._prefill is not None else
                       f"; {self.prefill_note}" if self.prefill_note else "")
            return f"{COMPILED} (batch {sizes}; {lengths}{segments}{regions}{graphs}{packed}{fused}{prefill})"
        return f"{EAGER} ({self.reason})" if self.reason else EAGER

    @property
    def max_cache_len(self) -> int:
        return self.cache_lengths[-1] if self.cache_lengths else 0

    def _lengths_for(self, batch_size: int) -> tuple[int, ...]:
        if batch_size in self.job_cache_lengths:
            return (self.job_cache_lengths[batch_size],)
        return self.cache_lengths if batch_size > 1 else self.cache_lengths[-1:]

    @property
    def captured(self) -> bool:
        """Whether the decode steps run as CUDA graphs (on a GPU) rather than compiled calls from Python."""
        return bool(self._loops) and all(loop.captured for loop in self._loops.values())

    def compiled_batch_size(self, batch_size: int, total_tokens: int) -> int | None:
        """The warmed batch size this call runs at (>= batch_size, padded up), or None for the eager path."""
        if not self.compiled or not self._open:
            return None
        return next((size for size in self.batch_sizes
                     if size >= batch_size and total_tokens <= self._lengths_for(size)[-1]), None)

    def submit(self, generate: Callable[..., Any], kwargs: dict, compiled_batch: int | None,
               total_tokens: int) -> Future:
        """Start `generate(**kwargs)`: on the runner thread with the decode loop of that batch size whose cache is the
        shortest that holds `total_tokens` (prompt + reply), or eagerly on a thread of its own."""
        if compiled_batch is None or not self._open:
            future: Future = Future()

            def run() -> None:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(generate(**kwargs))
                    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                        future.set_exception(exc)

            threading.Thread(target=run, name="quant-generate", daemon=True).start()
            return future

        def run_compiled():
            # Looked up when it runs: another model's unload may be capturing this one's loops again meanwhile, and
            # then this call runs eagerly (same tokens, padded batch and all).
            length = next((n for n in self._lengths_for(compiled_batch) if n >= total_tokens), None)
            loop = self._loops.get((compiled_batch, length))
            with torch.inference_mode():  # the cache's tensors were made in inference mode
                if loop is None:
                    return generate(**kwargs)
                loop.prefill_forward = self._prefill_forward() if compiled_batch > 1 else None
                return generate(**kwargs, past_key_values=loop.cache, custom_generate=loop,
                                decode_streamer=kwargs.get("streamer"))

        if compiled_batch == 1:
            return compiled_runner().submit(run_compiled)
        _batch_work_started()
        try:
            future = compiled_runner().submit(run_compiled)
        except BaseException:
            _batch_work_ended()
            raise
        future.add_done_callback(_batch_work_ended)
        return future

    def close(self) -> None:
        """Free the static caches, the CUDA graphs and the compiled code (on the runner thread, after any compiled call
        still queued there)."""
        was_open, self._open = self._open, False
        self._drop_loops()
        if was_open:
            _open_paths.discard(self)
            compiled_runner().submit(_forget_compiled_code).result()
            for other in list(_open_paths):
                other._warm_up_again()

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        """Compile and capture every batch size's decode step now, then generate a few tokens through each (on the
        runner thread)."""
        self._drop_loops()
        for size in self.batch_sizes:
            self._warm_size(size, progress)

    def _warm_size(self, size: int, progress: Callable[[str], None] | None = None) -> None:
        """Compile and capture the decode loops of one batch size (one per cache length of `_lengths_for`), each
        tried once."""
        model = self._model() if self._model else None
        if model is None:
            raise RuntimeError("the model of this generation path is gone")
        forward = model.get_compiled_call(self.compile_config) if self.segments is None else None
        compile_options = self.compile_config.to_dict() if self.compile_config else {}
        if size > 1:
            self._build_compiled_prefill(model, progress)
        loop_type = Seq2SeqDecodeLoop if model.config.is_encoder_decoder else DecodeLoop
        for length in self._lengths_for(size):
            if progress:
                progress(f"Compiling the decode step for batch {size}, {length} tokens (cached on disk for the "
                         "next start)")
            if self.segments is None:
                loop = loop_type(model, batch_size=size, max_cache_len=length, forward=forward)
            else:
                loop = SegmentedDecodeLoop(model, batch_size=size, max_cache_len=length, plan=self.segments,
                                           compile=lambda fn: torch.compile(fn, **compile_options),
                                           regional=self.regional)
            prompt = self._tokenizer(["Warm-up"] * size, return_tensors="pt").to(loop.device)
            compiled_runner().submit(loop.capture, prompt["input_ids"]).result()
            self._loops[size, length] = loop
            kwargs = dict(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False, temperature=None,
                          top_p=None, top_k=None, pad_token_id=self._tokenizer.pad_token_id)
            self.submit(model.generate, kwargs, size, total_tokens=length).result()

    def _build_compiled_prefill(self, model, progress: Callable[[str], None] | None = None) -> None:
        """Where QUANT_COMPILE_PREFILL=on: build the batches' CompiledPrefill once, compiled and checked against the
        eager prefill on the runner thread (at the first batch size above 1 compiled, as part of its compile), or say
        in `prefill_note` why the batches prefill eagerly."""
        if load_settings().compile_prefill != "on" or self._prefill is not None or self.prefill_note:
            return
        refusal = ragged.model_refusal(model) or ragged.compiled_prefill_refusal(model)
        prefill = None
        started = time.perf_counter()
        if refusal is None:
            if progress:
                progress("Compiling the batch prefill (one decoder layer for any prompt length; cached on disk)")
            backend = self.compile_config.backend if self.compile_config else "inductor"
            try:
                prefill = ragged.CompiledPrefill(model, lambda fn: torch.compile(fn, backend=backend))
                refusal = compiled_runner().submit(prefill.check, model).result()
            except Exception as exc:  # noqa: BLE001 - the batches prefill eagerly, as before
                logger.warning("Compiling the batch prefill failed; batches prefill eagerly.", exc_info=True)
                refusal = f"compiling it failed: {_first_line(exc)}"
        self.prefill_seconds = time.perf_counter() - started
        if refusal:
            self.prefill_note = f"batch prefill eager: {refusal}"
        else:
            self._prefill = prefill
        logger.info("Batch prefill: %s (%.1f s)", self.prefill_note or "one compiled decoder layer",
                    self.prefill_seconds)

    def _prefill_forward(self) -> Callable | None:
        """What a compiled batch's groups run through now: the CompiledPrefill's forward while QUANT_COMPILE_PREFILL=on
        (read at each call, so a bench can measure both in one process), else None (the model, eagerly)."""
        if self._prefill is None or load_settings().compile_prefill != "on":
            return None
        return self._prefill.forward

    def cache_bytes_for(self, size: int, lengths: tuple[int, ...] | None = None) -> int:
        """What the static caches of batch `size` would take (one per cache length: `lengths`, or those it is
        compiled with), from the loops already made: a cache's bytes grow with batch size x length."""
        per_slot = max((loop.cache_bytes() / (batch * length) for (batch, length), loop in self._loops.items()),
                       default=0.0)
        return int(sum(size * length * per_slot for length in lengths or self._lengths_for(size)))

    def job_cache_length(self, tokens: int) -> int:
        """The cache length a batch job whose longest prompt + reply takes `tokens` is compiled with: `tokens` rounded
        up to JOB_CACHE_STEP, at most the longest QUANT_STATIC_CACHE_TOKENS length."""
        return min(self.max_cache_len, -(-tokens // JOB_CACHE_STEP) * JOB_CACHE_STEP)

    def cache_refusal(self, tokens: int) -> str | None:
        """Why a generation whose longest prompt + reply takes `tokens` cache slots cannot run compiled at any batch
        size (past the longest static cache), or None."""
        if tokens > self.max_cache_len:
            return (f"the longest prompt and its reply need {tokens} cache tokens, past the compiled "
                    f"{self.max_cache_len} (QUANT_STATIC_CACHE_TOKENS)")
        return None

    def add_batch_size(self, size: int, tokens: int, progress: Callable[[str], None] | None = None) -> str | None:
        """Compile batch `size` now for a batch job whose longest prompt + reply takes `tokens` cache slots, unless a
        loop of that size holds them already (QUANT_COMPILE_BATCH_ON_DEMAND).

        One loop, with a cache of the job's length (`job_cache_length`), not one per QUANT_STATIC_CACHE_TOKENS length:
        a batch's decode step reads its whole static cache, so at batch 128 a cache of 1,280 slots for prompts of up
        to 1,000 tokens reads and holds 62% of what 2,048 slots do (the attention's share of the step, not the
        weights'). A later job that needs more compiles its size again, longer, in place of the shorter loop. Returns
        why it is not compiled (the job's chunks then run eagerly), or None once it is. Kept while the model stays
        loaded; nothing is compiled at load for it, so a model only chatted with loads as fast as before."""
        with self._adding:
            if not self.compiled or not self._open:
                return self.reason or "the compiled path is closed"
            too_long = self.cache_refusal(tokens)
            if too_long:
                return too_long
            if self.compiled_batch_size(size, tokens) == size:
                model = self._model() if self._model else None
                if model is not None and size > 1:
                    self._build_compiled_prefill(model, progress)  # QUANT_COMPILE_PREFILL=on after the size's compile
                return None
            length = self.job_cache_length(tokens)
            model = self._model() if self._model else None
            device = next(model.parameters()).device if model is not None else None
            if device is not None and device.type == "cuda":
                needed = self.cache_bytes_for(size, (length,))
                free = (torch.cuda.mem_get_info(device)[0]  # what the driver has, what torch holds unused (a model
                        + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # unloaded...)
                        + sum(loop.cache_bytes() for (batch, _), loop in self._loops.items() if batch == size))
                if needed > 0.9 * free:
                    return (f"batch {size}'s static cache would take {needed / 2**30:.1f} GiB of the "
                            f"{free / 2**30:.1f} GiB free on {device}: a smaller batch size compiles")
            started = time.perf_counter()
            self._drop_loops(size)
            self.job_cache_lengths[size] = length
            _batch_work_started()
            try:
                self._warm_size(size, progress)
            except Exception as exc:  # noqa: BLE001 - the job runs eagerly, the loaded sizes keep working
                logger.warning("Compiling batch size %s for a batch job failed; its chunks run eagerly.", size,
                               exc_info=True)
                self._drop_loops(size)
                self.job_cache_lengths.pop(size, None)
                self.batch_sizes = tuple(s for s in self.batch_sizes if s != size)
                return f"compiling batch {size} failed: {_first_line(exc)}"
            finally:
                _batch_work_ended()
            self.batch_sizes = tuple(sorted({*self.batch_sizes, size}))
            self.cache_bytes = sum(loop.cache_bytes() for loop in self._loops.values())
            self.warmup_seconds += time.perf_counter() - started
            return None

    def _drop_loops(self, size: int | None = None) -> None:
        """Forget the loops (of batch `size` only, if given) now; free them on the runner thread, once the calls still
        running or queued are done."""
        loops = {key: loop for key, loop in self._loops.items() if size is None or key[0] == size}
        self._loops = {key: loop for key, loop in self._loops.items() if key not in loops}
        if size is None:
            self._prefill = None  # its copy of the model's modules and its compiled code go with the loops
        if not loops:
            return

        def release() -> None:
            for loop in loops.values():
                loop.release()

        compiled_runner().submit(release).result()

    def _warm_up_again(self) -> None:
        """After another model's unload reset the compiled state: recompile now, or fall back to eager with a reason."""
        if self.lockstep:  # its warm-up's forward passes need every rank: this one alone would wait for them forever
            self._stay_eager("another model's unload reset the compiled code; a tensor-parallel path is not "
                             "recompiled")
            return
        with self._adding:  # not while a batch job adds a batch size to the same loops
            self._recompile()

    def _recompile(self) -> None:
        try:
            self.warm_up()
        except Exception as exc:  # noqa: BLE001 - this model stays usable eagerly
            logger.warning("Recompiling a loaded model after another model's unload failed; it generates eagerly now.",
                           exc_info=True)
            self._stay_eager(f"recompiling after another model's unload failed: {_first_line(exc)}")
            self._restore_library_modules()

    def _stay_eager(self, reason: str) -> None:
        """Give up the compiled loops for good: every later call runs eagerly, and `reason` says why."""
        self._open, self.compiled = False, False
        self.reason = reason
        self._drop_loops()
        _open_paths.discard(self)

    def _restore_library_modules(self) -> None:
        """An eager path runs the library's own attention and projections: undo packed GQA decode and fusion."""
        model = self._model() if self._model else None
        if self.packed_gqa and model is not None:
            restore_sdpa(model)
        if self.fused_projections and model is not None:
            unfuse_projections(model)
        self.packed_gqa, self.decode_kernel, self.fused_projections = False, False, ""


_open_paths: weakref.WeakSet[GenerationPath] = weakref.WeakSet()
"""Compiled paths in use: each is warmed up again when another one's unload resets the shared compiled state."""


JOB_CACHE_STEP = 256
"""A batch size compiled for a job gets a static cache of the job's longest prompt + reply rounded up to this many
tokens (GenerationPath.job_cache_length)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def eager_path(reason: str) -> GenerationPath:
    return GenerationPath(compiled=False, reason=reason)


def _fuse_or_say_why(model) -> str:
    """Fuse the model's sibling projections; a failure leaves every layer as loaded (the model still compiles)."""
    try:
        return fuse_projections(model).describe()
    except Exception as exc:  # noqa: BLE001 - an optimisation: never the reason a load fails
        logger.warning("Fusing projections failed; they stay separate.", exc_info=True)
        unfuse_projections(model)
        return f"projections not fused: {_first_line(exc)}"


def prepare_generation_path(model, tokenizer, *, method_refusal: str | None, kind: str,
                            context: int | None, progress: Callable[[str], None] | None = None,
                            settings: Settings | None = None,
                            compile_options: dict[str, Any] | None = None) -> GenerationPath:
    """Decide the path for a freshly loaded model and, when compiled, warm every batch size up now.

    `compile_options`: the quantization method's Inductor settings for this model's compilation only
    (QuantMethod.compile_options); other backends take none. A failure to compile is not an error: the model stays
    usable on the eager path, with the reason shown.
    """
    settings = settings or load_settings()
    devices = {str(p.device) for p in model.parameters()}
    plan = segments_refusal = None
    if kind == "causal" and (len(devices) > 1 or settings.decode_segments > 1):
        plan = segment_plan(model, settings.decode_segments)
        if isinstance(plan, str):
            plan, segments_refusal = None, plan
    refusal = fast_path_refusal(method_refusal=method_refusal, kind=kind, devices=devices, settings=settings,
                                segments_refusal=segments_refusal,
                                model_refusal=seq2seq_refusal(model) if kind == "seq2seq" else None,
                                quantized=getattr(model.config, "quantization_config", None) is not None)
    if refusal:
        return eager_path(refusal)
    split_plan = plan  # a model split over GPUs (or cut by QUANT_DECODE_SEGMENTS) runs in segments either way
    regional, regional_note = False, ""
    if settings.compile_regions == "layers":
        if kind != "causal":
            regional_note = "encoder-decoder models compile whole"
        else:
            plan = plan or segment_plan(model, 0)
            regional = not isinstance(plan, str)
            if not regional:
                plan, regional_note = None, plan
    configure_kernel_cache(settings)
    compiled_runner().submit(_allow_more_recompiles).result()
    cache_lengths = tuple(sorted({min(n, context or n) for n in settings.static_cache_tokens}))
    # No "reduce-overhead": the decode loop captures its own CUDA graph (decode.py), without cudagraph trees.
    inductor = settings.compile_backend == "inductor"
    # torch.compile takes a mode or options, not both; "default" is no options.
    options = dict(compile_options or {}) if inductor else {}
    compile_config = CompileConfig(backend=settings.compile_backend, dynamic=False,
                                   mode="default" if inductor and not options else None, options=options or None)
    packed, packed_note = use_packed_gqa_decode(model) if settings.packed_gqa_decode else (False, "")
    decode_kernel, decode_kernel_note = use_decode_kernel(model) if packed else (False, "")
    fused = _fuse_or_say_why(model) if fusion_wanted(settings, kind, devices) else ""
    path = GenerationPath(compiled=True, cache_lengths=cache_lengths, batch_sizes=settings.compiled_batch_sizes,
                          compile_config=compile_config, _open=True, _model=weakref.ref(model), _tokenizer=tokenizer,
                          packed_gqa=packed, packed_gqa_note=packed_note, decode_kernel=decode_kernel,
                          decode_kernel_note=decode_kernel_note, fused_projections=fused, segments=plan,
                          regional=regional, regional_note=regional_note)
    started = time.perf_counter()
    try:
        try:
            path.warm_up(progress)
        except Exception as exc:  # noqa: BLE001 - one layer for all is our choice, not the model's: compile it whole
            if not path.regional or split_plan is not None:
                raise
            logger.warning("Compiling one decoder layer for all layers failed; compiling the whole forward.",
                           exc_info=True)
            # dynamo's entries of the failed try stay until the next unload resets them (as close() does): resetting
            # now would take the compiled code of the other loaded models too
            path._drop_loops()
            path.segments, path.regional = None, False
            path.regional_note = f"one compiled layer for all failed: {_first_line(exc)}"
            path.warm_up(progress)
    except Exception as exc:  # noqa: BLE001 - any compile failure falls back to eager
        logger.warning("The compiled generation path failed to warm up; using eager generation.", exc_info=True)
        path._restore_library_modules()
        path.close()
        return eager_path(f"compiling failed, eager instead: {_first_line(exc)}")
    _open_paths.add(path)
    path.warmup_seconds = time.perf_counter() - started
    path.cache_bytes = sum(loop.cache_bytes() for loop in path._loops.values())
    return path
