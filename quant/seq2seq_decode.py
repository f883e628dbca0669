"""The compiled decode loop of encoder-decoder models (T5, BART): decode.py's loop, with a fixed cross-attention cache.

Why our own loop and not transformers' static-cache compiled `generate` (which does handle encoder-decoder models:
`_prepare_static_cache` builds an `EncoderDecoderCache` of two `StaticCache`s, and `_valid_auto_compile_criteria`
compiles the decoder step): it sizes the cross-attention cache to each call's encoder length, so every prompt length
compiles again, and it has the host work around every step that decode.py measured (guards, masks built eagerly, a
host sync per step). Here, as for causal models:

* `generate` still runs the encoder (eagerly, once per call: prompts vary in length), prepares the generation config,
  the logits processors, the stopping criteria and the decoder's start tokens, and the result is what `generate`
  returns (`custom_generate` hook).
* The loop owns an `EncoderDecoderCache` of two `StaticCache`s of `max_cache_len` slots: the decoder's self-attention
  (start token + reply) and the cross-attention over the encoder's output, padded to `max_cache_len` positions with
  an encoder mask that hides the padding. So the cross-attention keys have one shape for every prompt that fits.
* The first decoder step runs eagerly: it computes every layer's cross-attention keys and values into the static
  cross cache and marks them done (`EncoderDecoderCache.is_updated`, a Python flag: a compiled step sees it True
  always, so it compiles once). Every later step is the compiled decoder forward over fixed buffers (token, the
  decoder's 2D mask as long as the cache, the padded encoder output and its mask), captured on CUDA as one graph.
  Positions (T5's relative bias, BART's learned positions) come from the self-attention cache's write position, a
  tensor: nothing in the step depends on a Python count.
* Logits processing, sampling, stopping and streaming are decode.py's (the same `_sample` loop, tokens read back
  one step late on CUDA).

A cache length bounds both the prompt (encoder tokens) and the reply (+1 for the start token): a call takes the
shortest length that holds max(prompt, reply + 1) (generation.cache_tokens), so batch 128 x 16 new tokens on
64-token prompts attends over 64 slots, not the longest cache. The first step is eager (one step of the reply); the
encoder is too, and at batch 128 its prompt-long forward is matmul-bound, not launch-bound.

T5 keeps its feed-forward output projections (`wo`) in fp32 in fp16 loads (`_keep_in_fp32_modules`) and unquantized in
int8 and nf4 loads; its forward casts to that weight's dtype, which traces like any other op (tested in fp16 and nf4,
and with Inductor on the CPU).
"""

from __future__ import annotations

from typing import Callable

import torch
from transformers import EncoderDecoderCache, StaticCache
from transformers.modeling_outputs import BaseModelOutput

from .decode import DecodeLoop


class Seq2SeqDecodeLoop(DecodeLoop):
    """One batch size's encoder-decoder decode loop at one cache length (see the module's docstring).

    Used as decode.DecodeLoop is: `model.generate(past_key_values=loop.cache, custom_generate=loop, ...)`.
    """

    def __init__(self, model, *, batch_size: int, max_cache_len: int, forward: Callable) -> None:
        self.model = model
        self.batch_size = batch_size
        self.max_cache_len = max_cache_len
        self.forward = forward
        decoder_config = model.config.get_text_config(decoder=True)
        self.cache = EncoderDecoderCache(StaticCache(config=decoder_config, max_cache_len=max_cache_len),
                                         StaticCache(config=decoder_config, max_cache_len=max_cache_len))
        device = next(model.parameters()).device
        self.device = device
        self.token = torch.zeros((batch_size, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((batch_size, max_cache_len), dtype=torch.long, device=device)
        """The decoder's self-attention mask: the slots written so far."""
        self.encoder_mask = torch.zeros((batch_size, max_cache_len), dtype=torch.long, device=device)
        self.encoder_states: torch.Tensor | None = None
        """The encoder's output, padded to `max_cache_len` positions (allocated at the first prefill: its dtype is
        the encoder's output dtype)."""
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def cache_bytes(self) -> int:
        caches = (self.cache.self_attention_cache, self.cache.cross_attention_cache)
        tensors = [t for cache in caches for layer in cache.layers for t in (layer.keys, layer.values)]
        if self.encoder_states is not None:
            tensors.append(self.encoder_states)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def release(self) -> None:
        super().release()
        self.encoder_states = None

    def _step(self) -> torch.Tensor:
        slot = self.cache.self_attention_cache.layers[0].cumulative_length.reshape(1)
        self.mask.index_fill_(1, slot, 1)
        return self.forward(decoder_input_ids=self.token, decoder_attention_mask=self.mask,
                            encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_states),
                            attention_mask=self.encoder_mask, past_key_values=self.cache, use_cache=True).logits[:, -1]

    def capture(self, prompt_ids: torch.Tensor) -> None:
        """Run the encoder on `prompt_ids` and the eager first decoder step (allocating the caches and the encoder
        buffer), then compile the step and, on CUDA, record it as a graph; the cache is left empty."""
        with torch.inference_mode():
            mask = torch.ones_like(prompt_ids)
            states = self.model.get_encoder()(input_ids=prompt_ids, attention_mask=mask).last_hidden_state
            start = torch.full((self.batch_size, 1), self._start_token(), dtype=torch.long, device=self.device)
            self._prefill(start, BaseModelOutput(last_hidden_state=states), mask, None)
            self.token.copy_(start)
            self._compile_and_capture()

    def _start_token(self) -> int:
        token = self.model.generation_config.decoder_start_token_id
        if token is None:
            token = self.model.config.decoder_start_token_id
        return int(token[0] if isinstance(token, list) else token)

    def _prefill_inputs(self, model_kwargs: dict) -> dict:
        return {"encoder_outputs": model_kwargs.pop("encoder_outputs", None),
                "encoder_mask": model_kwargs.pop("attention_mask", None),
                "decoder_mask": model_kwargs.pop("decoder_attention_mask", None)}

    def _prefill(self, input_ids: torch.Tensor, encoder_outputs, encoder_mask: torch.Tensor | None,
                 decoder_mask: torch.Tensor | None) -> torch.Tensor:
        """Reset the cache, copy the encoder's output (and mask) into the padded buffers, run the decoder's first step
        eagerly (it fills the cross-attention cache); return its logits."""
        if encoder_outputs is None:
            raise ValueError("The compiled seq2seq loop needs the encoder's output from `generate`.")
        if input_ids.shape[1] != 1 or (decoder_mask is not None and not bool(decoder_mask.all())):
            raise ValueError("The compiled seq2seq loop starts the decoder from one start token.")
        states = encoder_outputs.last_hidden_state
        length = states.shape[1]
        if length > self.max_cache_len:
            raise ValueError(f"The prompt has {length} tokens; this loop's cache holds {self.max_cache_len}.")
        if self.encoder_states is None:  # once: a captured graph holds its address
            self.encoder_states = torch.zeros((self.batch_size, self.max_cache_len, states.shape[-1]),
                                              dtype=states.dtype, device=self.device)
        self.cache.reset()
        self.encoder_states.zero_()
        self.encoder_states[:, :length] = states
        self.encoder_mask.zero_()
        self.encoder_mask[:, :length] = 1 if encoder_mask is None else encoder_mask
        self.mask.zero_()
        self.mask[:, 0] = 1
        out = self.model(decoder_input_ids=input_ids, decoder_attention_mask=self.mask,
                         encoder_outputs=BaseModelOutput(last_hidden_state=self.encoder_states),
                         attention_mask=self.encoder_mask, past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1]


CHECKED_FAMILIES = ("t5", "mt5", "bart")
"""Model types whose compiled decode is checked against eager generation (tests/unit/test_seq2seq_fastpath.py: T5 and
BART; mT5 is T5's code). Other encoder-decoder families keep their own attention and cache code: they stay eager
until checked, rather than risk other tokens."""


def seq2seq_refusal(model) -> str | None:
    """Why this encoder-decoder model stays on the eager path, or None."""
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in CHECKED_FAMILIES:
        return (f"compiled seq2seq decode is checked on T5 and BART only; {model_type} models use the eager path")
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support a static cache under torch.compile"
    return None
