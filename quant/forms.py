"""The forms users fill (the Model tab, the CLI's load flags), as objects: one translation from what was typed to a
request, shared by the app and the CLI."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from .access import LocalFolders
from .loader import LoadRequest
from .methods import ALL_OPTIONS, METHODS, Option, QuantOptions, parse_mode

DEFAULT_ATTENTION = "(model default)"
"""What the Model tab's attention box shows for "let the model decide"."""


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
