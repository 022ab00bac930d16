"""Pooling: turning a prompt's hidden states into an embedding, class probabilities or
per-token scores (the embed / classify / reward tasks).

A pooling request runs its prompt through the same scheduler, chunked prefill and
paged KV cache as generation; each step hands the rows of its chunk to `Pooler`,
which folds them into a per-sequence partial result, and the last chunk finishes
it: pool, apply the model's task head (if any), then the activation.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from intarsia.engine.scheduler import ScheduledSeq
from intarsia.engine.sequence import Sequence

POOLING_TYPES = ("LAST", "MEAN", "CLS", "ALL")
POOLING_TASKS = ("embed", "classify", "reward")


@dataclass(frozen=True)
class PoolerConfig:
    """How a prompt's hidden states become its pooling result.

    `pooling_type`: LAST (the final prompt token, where a causal decoder has seen the
    whole prompt), MEAN (average over the prompt), CLS (the first token) or ALL (one
    row per token). `normalize`: L2-normalise each output row. `softmax`: turn a
    head's logits into probabilities (a sigmoid when the head has a single label).
    """

    pooling_type: str = "LAST"
    normalize: bool = False
    softmax: bool = False

    def __post_init__(self) -> None:
        if self.pooling_type not in POOLING_TYPES:
            raise ValueError(f"unknown pooling_type {self.pooling_type!r}; use one of {POOLING_TYPES}")
        for name in ("normalize", "softmax"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"pooler {name} must be True or False, got {getattr(self, name)!r}")

    @property
    def needs_whole_prompt(self) -> bool:
        """True when rows before the last one are read, so no prompt token may be
        skipped through the prefix cache."""
        return self.pooling_type != "LAST"


# normalize / softmax per task; the pooling type comes from the architecture.
_TASK_DEFAULTS = {"embed": {"normalize": True}, "classify": {"softmax": True}, "reward": {}}
# sentence-transformers Pooling module flags -> pooling_type.
_SENTENCE_TRANSFORMERS_MODES = {"pooling_mode_cls_token": "CLS", "pooling_mode_mean_tokens": "MEAN",
                                "pooling_mode_lasttoken": "LAST"}


def sentence_transformers_pooler(model_path: Path) -> dict[str, Any]:
    """Pooler settings from a sentence-transformers checkpoint (`modules.json` naming a
    Pooling module folder and, optionally, a Normalize module); {} when there is none."""
    modules_file = model_path / "modules.json"
    if not modules_file.exists():
        return {}
    try:
        modules = json.loads(modules_file.read_text())
        settings: dict[str, Any] = {"normalize": any(
            m.get("type", "").endswith("models.Normalize") for m in modules)}
        for module in modules:
            if module.get("type", "").endswith("models.Pooling"):
                pooling = json.loads((model_path / module["path"] / "config.json").read_text())
                modes = [kind for flag, kind in _SENTENCE_TRANSFORMERS_MODES.items() if pooling.get(flag)]
                unsupported = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v
                               and k not in _SENTENCE_TRANSFORMERS_MODES]
                if unsupported or len(modes) != 1:
                    raise ValueError(f"sentence-transformers pooling {sorted(unsupported) or modes} is "
                                     f"not supported; one of {sorted(_SENTENCE_TRANSFORMERS_MODES)} is")
                settings["pooling_type"] = modes[0]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"ignoring unreadable sentence-transformers config in {model_path}: {e}",
                      stacklevel=2)
        return {}
    return settings


def resolve_pooler_config(task: str, model_cls: type, model_path: Path,
                          override: PoolerConfig | dict[str, Any] | None) -> PoolerConfig:
    """The pooler for `task`: the task's defaults, the architecture's pooling type, the
    checkpoint's sentence-transformers settings, then the user's `override` (a dict
    replaces the fields it names; a PoolerConfig replaces them all)."""
    if isinstance(override, PoolerConfig):
        return override
    settings = {"pooling_type": getattr(model_cls, "default_pooling_type", "LAST"),
                **_TASK_DEFAULTS[task], **sentence_transformers_pooler(model_path)}
    if override is not None:
        if not isinstance(override, dict):
            raise ValueError(f"pooler_config must be a dict or a PoolerConfig, got "
                             f"{type(override).__name__}")
        known = {f.name for f in fields(PoolerConfig)}
        unknown = sorted(set(override) - known)
        if unknown:
            raise ValueError(f"unknown pooler_config keys {unknown}; use {sorted(known)}")
        settings.update(override)
    if isinstance(settings["pooling_type"], str):
        settings["pooling_type"] = settings["pooling_type"].upper()
    return replace(PoolerConfig(), **settings)


class Pooler:
    """Folds each pooling sequence's prefill chunks into a partial result and finishes
    it at the last chunk. `head` is the model's task head (classification / reward
    scores), applied to the pooled rows; None returns hidden states (embeddings)."""

    def __init__(self, head: nn.Module | None) -> None:
        self.head = head
        self._partial: dict[int, Any] = {}  # seq_id -> pooling-type specific state

    @torch.inference_mode()
    def collect(self, pool_rows: list[tuple[ScheduledSeq, int, int]],
                hidden: torch.Tensor) -> list[Sequence]:
        """Take this step's rows (item, first row, count) of each pooling sequence; returns
        the sequences whose prompt is now complete, with `request.pooled` set."""
        done = []
        for item, first, count in pool_rows:
            seq = item.seq
            # The first chunk since admission (again after a preemption) starts afresh.
            restart = seq.num_computed_tokens == seq.num_cached_tokens
            self._add(seq, hidden[first:first + count], restart)
            if item.samples:
                seq.request.pooled = self._finish(seq)
                done.append(seq)
        return done

    def _add(self, seq: Sequence, rows: torch.Tensor, restart: bool) -> None:
        kind = seq.request.pooling.pooling_type
        state = None if restart else self._partial.get(seq.seq_id)
        if kind == "LAST":
            state = rows[-1].clone()  # clones: the runner may reuse its output buffer
        elif kind == "CLS":
            state = rows[0].clone() if restart else state
        elif kind == "MEAN":
            total = rows.float().sum(0)
            state = (total, len(rows)) if state is None else (state[0] + total, state[1] + len(rows))
        else:  # ALL
            state = [*(state or []), rows.clone()]
        self._partial[seq.seq_id] = state

    def _finish(self, seq: Sequence) -> torch.Tensor:
        config = seq.request.pooling
        state = self._partial.pop(seq.seq_id)
        if config.pooling_type == "MEAN":
            pooled = state[0] / state[1]
        elif config.pooling_type == "ALL":
            pooled = torch.cat(state)
        else:
            pooled = state
        if self.head is not None:
            weight = next(self.head.parameters())
            pooled = self.head(pooled.to(weight.dtype))
        pooled = pooled.float()
        if config.softmax:
            pooled = pooled.sigmoid() if pooled.shape[-1] == 1 else pooled.softmax(-1)
        if config.normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled.cpu()
