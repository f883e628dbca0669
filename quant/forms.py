"""The forms users fill, as objects: one translation from what was typed to a request, shared by the app and the CLI.

`LoadForm` is the Model tab and the CLI's load flags, `GenerationForm` the Chat tab's generation settings (which Batch
shares) and the CLI's generation flags, `QuantizeForm` the Quantize tab and `python -m quant quantize`. Each takes its
values by field name (`from_values`, how the app hands them over) or from parsed arguments (`from_args`), and says
what is wrong with a value in words that name the field. No Gradio here: the app's tabs map components to these
field names (ui/), in the order each form's `INPUTS` gives, which is the order its HTTP endpoint takes them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from .access import LocalFolders
from .errors import QuantError
from .loader import LoadRequest
from .methods import ALL_OPTIONS, METHODS, Option, QuantOptions, parse_mode

DEFAULT_ATTENTION = "(model default)"
"""What the Model tab's attention box shows for "let the model decide"."""


def number(value: Any, cast: type, name: str) -> Any:
    """A number from a form field, or a message naming the field (an emptied box, or null over the API). Ranges,
    NaN included, are checked where the number is used."""
    try:
        return cast(value)
    except (TypeError, ValueError, OverflowError):
        raise QuantError(f"{name} must be a number.") from None


def shown_value(option: Option, value: Any) -> Any:
    """An option's value as its form field shows it: a list of names as text, a choice as the text of its value
    (automatic, None, as "")."""
    if option.kind == "names":
        return ", ".join(value) if isinstance(value, (list, tuple)) else value or ""
    if option.kind == "choice":
        return "" if value is None else str(value)
    return value


@dataclass
class LoadForm:
    """How to load a model, as typed: text and choices, not yet checked. `options` holds each method option's raw
    value by QuantOptions field name; only the chosen method's options are read (the others keep their defaults)."""

    model: str = ""
    mode: str = "bf16"
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    device_map: str | None = "auto"
    max_memory: str | None = None
    attention: str | None = None

    FIELDS = ("model", "mode", "revision", "token", "device_map", "max_memory", "attention")
    """The fields that are not method options (those are named by their QuantOptions field)."""
    INPUTS = ("model", "revision", "token", "mode", *(o.field for o in ALL_OPTIONS), "device_map", "max_memory",
              "attention")
    """Every field by name, in the order the Model tab takes them: its HTTP endpoints (/load_model, and
    /measure_modes after the modes) take their values in this order, or by these names."""

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> LoadForm:
        """A form from named values (the UI's components by name): the fields above and option field names."""
        return cls(**{k: values.get(k) for k in cls.FIELDS if k in values},
                   options={o.field: values[o.field] for o in ALL_OPTIONS if o.field in values})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoadForm:
        return cls(model=args.model, mode=args.mode, revision=args.revision, device_map=args.device_map,
                   max_memory=args.max_memory, attention=args.attn_implementation,
                   options={o.field: getattr(args, o.field) for o in ALL_OPTIONS})

    def to_values(self) -> dict[str, Any]:
        """The form as the Model tab shows it, by `INPUTS` name (the inverse of from_values): options not set hold
        their defaults. The tab's fields start from `LoadForm().to_values()`."""
        values = {"model": self.model or "", "revision": self.revision or "", "token": self.token or "",
                  "mode": self.mode or "bf16", "device_map": self.device_map or "auto",
                  "max_memory": self.max_memory or "", "attention": self.attention or DEFAULT_ATTENTION,
                  **{o.field: shown_value(o, self.options.get(o.field, o.default)) for o in ALL_OPTIONS}}
        return {name: values[name] for name in self.INPUTS}

    def quant_options(self) -> QuantOptions:
        """The chosen method's options parsed (a wrong value is refused with the option's name); the rest default."""
        method = parse_mode(self.mode or "bf16").method
        parsed = {o.field: o.parse(self.options.get(o.field)) for o in method.options if o.field in self.options}
        if "gptq_backend" in parsed and not parsed["gptq_backend"]:
            parsed["gptq_backend"] = None  # automatic
        return QuantOptions(**parsed)

    def to_request(self, *, owner: str | None = None, folders: LocalFolders | None = None) -> LoadRequest:
        attention = (self.attention or "").strip()
        return LoadRequest(
            model=self.model or "",
            mode=self.mode or "bf16",
            revision=(self.revision or "").strip() or None,
            device_map=(self.device_map or "").strip() or "auto",
            max_memory=(self.max_memory or "").strip() or None,
            attn_implementation=None if attention in ("", DEFAULT_ATTENTION) else attention,
            options=self.quant_options(),
            token=(self.token or "").strip() or None,
            owner=owner,
            folders=folders,
        )


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per method option (`Option.flag`), grouped by method; defaults are QuantOptions'."""
    seen: set[str] = set()
    for method in METHODS.values():
        new = [o for o in method.options if o.field not in seen]
        if not new:
            continue
        group = parser.add_argument_group(f"mode {method.name}" + (
            f" (and {', '.join(m.name for m in METHODS.values() if m is not method and set(m.options) & set(new))})"
            if any(m is not method and set(m.options) & set(new) for m in METHODS.values()) else ""))
        for option in new:
            seen.add(option.field)
            _add_option(group, option)


def _add_option(group, option: Option) -> None:
    if option.kind == "bool":
        if option.negative_flag:
            group.add_argument(option.flag, dest=option.field, action="store_true", default=option.default,
                               help=f"{option.help} (on by default)")
            group.add_argument(option.negative_flag, dest=option.field, action="store_false",
                               help=f"{option.help}: off")
        else:
            group.add_argument(option.flag, dest=option.field, action="store_true", help=option.help)
    elif option.kind == "choice":
        group.add_argument(option.flag, dest=option.field, default=option.default,
                           choices=[value for value, _ in option.choices if value], help=option.help)
    elif option.kind == "names":
        group.add_argument(option.flag, dest=option.field, default="", help=f"{option.help}, comma-separated")
    else:
        group.add_argument(option.flag, dest=option.field, default=option.default, help=option.help)


@dataclass
class GenerationForm:
    """Generation settings as typed: the Chat tab's settings (Batch uses the same) and the CLI's generation flags.
    Values may be text or numbers; `to_settings` turns them into checked GenerationSettings."""

    max_new_tokens: Any = 256
    do_sample: Any = False
    temperature: Any = 0.7
    top_p: Any = 0.9
    top_k: Any = 50
    repetition_penalty: Any = 1.0
    no_repeat_ngram_size: Any = 0
    seed: Any = None
    """Empty (or None): a new random seed each time; else a whole number, as text (the app's box) or an int."""

    INPUTS = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty",
              "no_repeat_ngram_size", "seed")
    """The fields in the order the Chat and Batch endpoints take them, after their own inputs."""
    NUMBERS = {"max_new_tokens": ("Max new tokens", int), "temperature": ("Temperature", float),
               "top_p": ("Top-p", float), "top_k": ("Top-k", int),
               "repetition_penalty": ("Repetition penalty", float),
               "no_repeat_ngram_size": ("No-repeat n-gram size", int)}
    """Each numeric field's name in messages, and its type."""

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> GenerationForm:
        return cls(**{name: values[name] for name in cls.INPUTS if name in values})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerationForm:
        return cls(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_p=args.top_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                   no_repeat_ngram_size=args.no_repeat_ngram_size, seed=args.seed)

    def seed_value(self) -> int | None:
        """The seed: none when empty; typed text must be a whole number in range (a message saying so otherwise).

        The app's Seed box is text, not a number box, because a number box shows and sends 0 when empty: every
        sampled reply would be seeded with 0."""
        from .generation import SEED_MAX

        if not isinstance(self.seed, str):
            return self.seed  # None, or the CLI's int (checked with the other settings)
        text = self.seed.strip()
        if not text:
            return None
        try:
            seed = int(text)
        except ValueError:
            seed = None
        if seed is None or not 0 <= seed <= SEED_MAX:
            raise QuantError(f"Seed must be a whole number from 0 to {SEED_MAX}, or empty for a random seed "
                             f"(got {text[:40]!r}).")
        return seed

    def to_settings(self):
        """Checked GenerationSettings (a wrong value is refused with a message naming the setting)."""
        from .generation import GenerationSettings

        numbers = {name: number(getattr(self, name), cast, label) for name, (label, cast) in self.NUMBERS.items()}
        settings = GenerationSettings(do_sample=bool(self.do_sample), seed=self.seed_value(), **numbers)
        settings.validate()
        return settings


@dataclass
class QuantizeForm:
    """What to quantize and how, as typed: the Quantize tab and `python -m quant quantize`. The recipe and the
    calibration fields apply to calibrated methods (GPTQ); the other methods ignore them."""

    model: str = ""
    revision: str | None = None
    token: str | None = field(default=None, repr=False)
    method: str = "gptq"
    bits: Any = 4
    group_size: Any = 128
    desc_act: Any = False
    sym: Any = True
    damp_percent: Any = 0.05
    num_samples: Any = 128
    seq_len: Any = 512
    calibration_source: str = "builtin"
    """builtin, paste (calibration_text) or upload (calibration_file)."""
    calibration_text: str | None = None
    calibration_file: str | None = None

    INPUTS = ("model", "revision", "token", "method", "bits", "group_size", "desc_act", "sym", "damp_percent",
              "num_samples", "seq_len", "calibration_source", "calibration_text", "calibration_file")
    """The fields in the order the Quantize tab's endpoint (/quantize) takes them."""

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> QuantizeForm:
        return cls(**{name: values[name] for name in cls.INPUTS if name in values})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> QuantizeForm:
        return cls(model=args.model, revision=args.revision, method=args.method, bits=args.bits,
                   group_size=args.group_size, desc_act=args.desc_act, sym=not args.asym,
                   damp_percent=args.damp_percent, num_samples=args.samples, seq_len=args.seq_len,
                   calibration_source="upload" if args.calibration else "builtin", calibration_file=args.calibration)

    def recipe(self):
        """The GPTQ recipe (checked by the quantize step); a field that is no number is refused by name."""
        from .gptq import GPTQRecipe

        return GPTQRecipe(bits=number(self.bits, int, "Bits"), group_size=number(self.group_size, int, "Group size"),
                          desc_act=bool(self.desc_act), sym=bool(self.sym),
                          damp_percent=number(self.damp_percent, float, "Damp percent"),
                          num_samples=number(self.num_samples, int, "Calibration samples"),
                          seq_len=number(self.seq_len, int, "Calibration length"))

    def calibration(self):
        """The calibration data chosen; a chosen source left empty is refused."""
        from .quantize import CALIBRATION_TEXTSETS, CalibrationData

        if self.calibration_source == "paste" and not (self.calibration_text or "").strip():
            raise QuantError("Paste some calibration text, or choose the built-in set.")
        if self.calibration_source == "upload" and not self.calibration_file:
            raise QuantError("Upload a .txt or .jsonl calibration file, or choose the built-in set.")
        return CalibrationData(builtin=CALIBRATION_TEXTSETS[0],
                               text=self.calibration_text if self.calibration_source == "paste" else None,
                               file=self.calibration_file if self.calibration_source == "upload" else None)
