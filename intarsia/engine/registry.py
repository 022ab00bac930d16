"""Architecture name -> model class, filled by the declarations in `intarsia.backbones`
(and the multimodal compositions) through `@register`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    cls: type[nn.Module]
    task: str  # default task: "generate" | "embed" | "classify" | "reward"
    multimodal: bool
    processor: type | None = None  # prompt processor class of a multimodal model
    canonical: str = ""  # the HF name this entry was registered under first (others are aliases)


_REGISTRY: dict[str, ModelEntry] = {}
# Modules whose import registers architectures.
_DECLARATION_MODULES = ("intarsia.backbones",)


def register(*names: str, task: str = "generate", multimodal: bool = False,
             processor: type | None = None):
    """Class decorator: make the model class loadable under HF architecture `names`
    (the first is the canonical one; further names are aliases such as vLLM's spelling).
    A multimodal model names its prompt processor (see `intarsia.processors.multimodal`)."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        for name in names:
            _REGISTRY[name] = ModelEntry(cls, task, multimodal or processor is not None, processor,
                                         canonical=names[0])
        return cls

    return wrap


def registry() -> dict[str, ModelEntry]:
    for module in _DECLARATION_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def resolve(architectures: list[str] | None) -> tuple[str, ModelEntry]:
    known = registry()
    for arch in architectures or []:
        if arch in known:
            return arch, known[arch]
    raise ValueError(f"unsupported architecture {architectures}; intarsia supports: "
                     f"{', '.join(sorted(known))}")
