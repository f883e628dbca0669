"""The compiled decode loop: one captured CUDA graph per decode step, tokens read back one step late.

Why not transformers' own compiled `generate` (static cache + torch.compile "reduce-overhead"): on an H100 it spent
about 2 ms of host work around every decode step of a 1B Llama (dynamo's guards, the cudagraph tree's bookkeeping,
masks and position ids built eagerly, two host syncs), while the GPU needed 1.7 ms for the step
(bench/results/generate-overhead-llama-1b-bf16-cuda-profile-matmul-decode.md). With the host in the loop every step,
the faster the kernels (4-bit), the larger that share.

What this does instead, as transformers' `custom_generate` hook (so `generate` still prepares the generation config,
the logits processors, the stopping criteria, the special tokens and the position ids, and the result is what
`generate` returns):

* The decode step's inputs live in fixed buffers (token, position, a 2D attention mask as long as the static cache).
  The step marks its own slot in the mask, runs the compiled forward on the static cache (whose write position is a
  tensor in the cache) and advances the position: all of it on the GPU. On CUDA it is captured once as a CUDA graph,
  so a step costs one graph launch.
* Logits processing, token choice and the stopping criteria are transformers' own, run eagerly on the GPU between
  graph launches (a dozen small kernels).
* Whether to stop, and the tokens to stream, are read one step late (transformers' `DeferredStopCheck`), so the host
  never waits for the GPU: while the GPU runs step k, the host hands step k-1's token to the streamer and queues step
  k+1. When a sequence ends, the one step too many is dropped.

Without CUDA (tests, the CPU with QUANT_FAST_GENERATION=all) the same loop runs the compiled step directly.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer
from transformers.generation.utils import DeferredStopCheck, StopCheck

from . import ragged
from .settings import load_settings

log = logging.getLogger(__name__)


_capture_streams: dict[torch.device, torch.cuda.Stream] = {}


PREFILL_RANGE, DECODE_RANGE = "quant.decode_loop.prefill", "quant.decode_loop.decode"
"""The loop's two phases as torch.profiler ranges: what a profiled job splits its time by (a range costs a few
microseconds when no profiler runs)."""


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream that every warm-up and capture on `device` uses.

    cuBLAS gets a workspace (32 MiB on an H100) per stream it runs on, kept for the life of the process, and a graph
    that uses cuBLAS keeps pointing at the workspace of the stream it was captured on. A fresh stream per capture
    would leave ~64 MiB behind at every load of a compiled model (seen on an H100); one stream reuses one workspace.
    Graphs never replay concurrently (one runner thread), so sharing it is safe.
    """
    if device not in _capture_streams:
        _capture_streams[device] = torch.cuda.Stream(device)
    return _capture_streams[device]


def full_length_static_cache(config, max_cache_len: int) -> StaticCache:
    """transformers' StaticCache for `config`, with every sliding-window layer holding all `max_cache_len` slots like
    a full-attention layer: the window is kept by the attention mask alone.

    Why: a StaticSlidingWindowLayer picks its branch (write in place, or roll once the window is full) and the mask
    sizes it reports from a Python int that counts the tokens. Under torch.compile that int is a guard, so the decode
    step of Phi-3 and Gemma 2/3 compiled again at every token until dynamo's recompile limit; and a captured CUDA graph
    replays the branch it recorded, so past the window it kept writing at positions the layer does not have. A
    full-length layer writes each token at its position (a tensor, as full-attention layers do), and transformers'
    sliding-window mask, computed on those absolute positions, hides the slots outside the window: the same attention
    as eager generation's, for `max_cache_len` slots instead of the window's in those layers.
    """
    cache = StaticCache(config=config, max_cache_len=max_cache_len)
    cache.layers = [StaticLayer(max_cache_len=max_cache_len) if isinstance(layer, StaticSlidingWindowLayer) else layer
                    for layer in cache.layers]
    return cache


class DecodeLoop:
    """One batch size's decode loop at one cache length: its static cache, its input buffers and (on CUDA) its
    captured step.

    An instance is passed to `model.generate(custom_generate=...)` together with `past_key_values=loop.cache`. One
    call at a time: the buffers and the graph are shared by every call that runs on this loop.
    """

    def __init__(self, model, *, batch_size: int, max_cache_len: int, forward: Callable | None,
                 device: torch.device | None = None) -> None:
        self.model = model
        self.batch_size = batch_size
        self.max_cache_len = max_cache_len
        self.forward = forward
        """The compiled model call (`model.get_compiled_call`)."""
        self.cache = full_length_static_cache(model.config, max_cache_len)
        device = device or next(model.parameters()).device
        self.device = device
        """Where the step's inputs live (a split model's: its input embedding's device)."""
        self.token = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch_size, max_cache_len), dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None
        """The captured step's output buffer (CUDA): the last position's logits, overwritten by each replay."""
        self.prefills_in_groups = (batch_size > 1 and not model.config.is_encoder_decoder
                                   and ragged.model_refusal(model) is None)
        """A ragged batch's prompts are prefilled in groups of similar length into the static cache (quant.ragged),
        not in one forward over the padded batch."""
        self.prefill_forward: Callable | None = None
        """What runs those groups: a quant.ragged.CompiledPrefill's forward (QUANT_COMPILE_PREFILL=on), else the
        model eagerly."""

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values)
                   if t is not None)

    # --- the step ---------------------------------------------------------------------------------------------------

    def _step(self) -> torch.Tensor:
        """Decode `self.token` at `self.position`: its slot (the cache's write position) becomes visible, the forward
        writes its keys and values there, the position moves on. Everything stays on the device."""
        slot = self.cache.layers[0].cumulative_length.reshape(1)
        self.mask.index_fill_(1, slot, 1)
        logits = self.forward(input_ids=self.token, attention_mask=self.mask, position_ids=self.position,
                              past_key_values=self.cache, use_cache=True).logits[:, -1]
        self.position.add_(1)
        return logits

    def _run_step(self) -> torch.Tensor:
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits

    def capture(self, prompt_ids: torch.Tensor) -> None:
        """Compile the step and, on CUDA, record it as a graph. Runs a prefill of `prompt_ids` first (the cache
        allocates its tensors at its first update; the graph holds their addresses), and leaves the cache empty."""
        with torch.inference_mode():
            self._prefill(prompt_ids, None, None)
            self._compile_and_capture()

    def _compile_and_capture(self) -> None:
        """After a prefill: compile the step and, on CUDA, record it as a graph; leave the cache empty."""
        with torch.inference_mode():
            if self.device.type != "cuda":
                self._step()  # compiles
                self.cache.reset()
                return
            side = _capture_stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # the first call compiles; the second runs what will be captured
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other sessions' eager generations may launch work from their threads meanwhile
            with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                self.logits = self._step()
            self.graph = graph
            self.cache.reset()

    def release(self) -> None:
        """Drop the graph (and its memory pool), the cache and the references to the model."""
        self.graph, self.logits = None, None
        self.cache = self.model = self.forward = self.prefill_forward = None

    # --- the loop ---------------------------------------------------------------------------------------------------

    def _prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                 position_ids: torch.Tensor | None) -> torch.Tensor:
        """Run the prompt through the model (eagerly: prompts vary in length) into the reset cache; set the buffers
        for the first decode step; return the last position's logits."""
        self.cache.reset()
        length = input_ids.shape[1]
        self.mask.zero_()
        self.mask[:, :length] = 1 if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = torch.arange(length, device=input_ids.device).expand(input_ids.shape[0], -1)
        columns = slice(None)
        if self._prefill_in_groups(input_ids, attention_mask):
            columns = slice(-1, None)  # the cache holds every column but the last
        out = self.model(input_ids=input_ids[:, columns], attention_mask=self.mask,
                         position_ids=position_ids[:, columns], past_key_values=self.cache, use_cache=True,
                         logits_to_keep=1)
        self.position.copy_(position_ids[:, -1:] + 1)
        return out.logits[:, -1]

    def _prefill_in_groups(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> bool:
        """Prefill all columns but the last of a ragged padded batch in groups into the reset cache (QUANT_BATCH_PREFILL
        =grouped, where the model allows it and the padding is worth skipping); False: nothing was done."""
        if (not self.prefills_in_groups or attention_mask is None or input_ids.shape[1] < 2
                or load_settings().batch_prefill != "grouped" or not ragged.worth_it(attention_mask)):
            return False
        try:
            ragged.prefill_into_static_cache(self.model, input_ids, attention_mask, self.cache,
                                             forward=self.prefill_forward)
            return True
        except Exception:  # noqa: BLE001 - the batch is prefilled whole instead, as before
            log.warning("Prefilling a batch in groups into the static cache failed; prefilling it whole.",
                        exc_info=True)
            self.cache.reset()
            return False

    def _prefill_inputs(self, model_kwargs: dict) -> dict:
        """Take the model inputs that `_prefill` uses out of what `generate` prepared."""
        return {"attention_mask": model_kwargs.pop("attention_mask", None),
                "position_ids": model_kwargs.pop("position_ids", None)}

    def __call__(self, model, input_ids: torch.LongTensor, logits_processor, stopping_criteria, generation_config,
                 decode_streamer=None, **model_kwargs) -> torch.LongTensor:
        """transformers' `_sample` for one batch size, with the decode step replayed (see the module's docstring).

        `generate` hands over what it prepared. transformers passes a `custom_generate` callable, besides `_sample`'s
        own arguments, those of its parameters that `_sample` lacks, taken out of `generate`'s keyword arguments: so
        the streamer comes as `decode_streamer` (`_sample`'s `streamer` is not passed on), and the model inputs stay
        in `model_kwargs` (naming them here would take them away from `generate`'s own preparation).
        """
        prefill_inputs = self._prefill_inputs(model_kwargs)
        cache = model_kwargs.pop("past_key_values", None)
        for ignored in ("use_cache", "logits_to_keep"):  # always on / always the last position here
            model_kwargs.pop(ignored, None)
        if model is not self.model or cache is not self.cache:
            raise ValueError("This decode loop belongs to another model or cache.")
        if model_kwargs:
            raise ValueError(f"The compiled decode loop does not take {', '.join(sorted(model_kwargs))}.")
        if input_ids.shape[0] != self.batch_size:
            raise ValueError(f"This decode loop runs batches of {self.batch_size}, not {input_ids.shape[0]}.")
        pad_token_id = generation_config._pad_token_tensor
        has_eos_stopping_criteria = any(hasattr(criteria, "eos_token_id") for criteria in stopping_criteria)
        unfinished = torch.ones(self.batch_size, dtype=torch.long, device=input_ids.device)
        # Deferred where the device runs asynchronously to the host (on the CPU there is nothing to overlap)
        stop_check = (DeferredStopCheck(input_ids, stopping_criteria.max_length, None, False, decode_streamer)
                      if input_ids.device.type == "cuda" else StopCheck(decode_streamer))
        with torch.profiler.record_function(PREFILL_RANGE):  # named ranges for torch.profiler (bench/batch_engines.py)
            logits = self._prefill(input_ids, **prefill_inputs)
        with torch.profiler.record_function(DECODE_RANGE):
            while True:
                # A split model's head may sit on another device than the tokens (quant.segments)
                scores = logits_processor(input_ids, logits.to(input_ids.device, copy=True, dtype=torch.float32))
                if generation_config.do_sample:
                    probs = torch.nn.functional.softmax(scores, dim=-1)
                    next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
                else:
                    next_tokens = torch.argmax(scores, dim=-1)
                if has_eos_stopping_criteria:
                    next_tokens = next_tokens * unfinished + pad_token_id * (1 - unfinished)
                input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
                unfinished = unfinished & ~stopping_criteria(input_ids, None)
                if stop_check(unfinished, next_tokens, input_ids.shape[1]):
                    break
                self.token.copy_(next_tokens[:, None])
                logits = self._run_step()
            steps_to_undo = stop_check.finish()
        if steps_to_undo:
            input_ids = input_ids[:, :-steps_to_undo]
        if decode_streamer is not None:
            decode_streamer.end()
        return input_ids
