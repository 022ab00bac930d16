"""Encoder outputs for a step: each media item encoded once, its rows inlaid into
the placeholder rows of the input embeddings that this step computes.

An item's output stays cached (by content hash) until every sequence that
scheduled it has computed its last placeholder token, so a chunked prefill that
splits an item's placeholders over several steps runs the encoder once. M-RoPE
models also get their 3-row positions here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from intarsia.engine.scheduler import ScheduledSeq
from intarsia.processors.multimodal import MultiModalItem
from intarsia.transfer import device_tensor


@dataclass
class Inlay:
    """Encoder rows `[first, first + count)` of `item` go to batch rows `[row, row + count)`."""

    item: MultiModalItem
    owner: tuple[int, int]  # (sequence id, item offset): one consumer of the cached output
    row: int
    first: int
    count: int

    @property
    def finishes_item(self) -> bool:
        return self.first + self.count == self.item.length


class EncoderRunner:
    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.uses_mrope = getattr(model, "uses_mrope", False)
        self.outputs: dict[bytes, torch.Tensor] = {}  # item hash -> encoder output rows
        self.consumers: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
        self.num_items_encoded = 0  # encoder runs, one per item (for tests and stats)

    def plan(self, scheduled: list[ScheduledSeq], starts: list[int]) -> list[Inlay]:
        """The inlays of a step whose sequence i owns batch rows from `starts[i]`."""
        inlays = []
        for item, row in zip(scheduled, starts, strict=False):
            mm = item.seq.request.mm_inputs
            if mm is None:
                continue
            begin = item.seq.num_computed_tokens
            end = begin + item.num_new_tokens
            for mm_item in mm.items_in_range(begin, end):
                lo, hi = max(begin, mm_item.offset), min(end, mm_item.end)
                owner = (item.seq.seq_id, mm_item.offset)
                self.consumers[mm_item.hash].add(owner)
                inlays.append(Inlay(mm_item, owner, row + lo - begin, lo - mm_item.offset, hi - lo))
        return inlays

    def positions(self, scheduled: list[ScheduledSeq]) -> torch.Tensor:
        """M-RoPE positions [3, tokens] of the step's rows; [tokens] when the three rows
        agree (text only, e.g. every decode step), where M-RoPE is plain rotary and the
        step stays eligible for CUDA graphs."""
        parts = []
        for item in scheduled:
            begin = item.seq.num_computed_tokens
            end = begin + item.num_new_tokens
            mm = item.seq.request.mm_inputs
            if mm is not None and mm.mrope_positions is not None:
                parts.append(mm.positions(begin, end))
            else:
                parts.append(torch.arange(begin, end).expand(3, -1))
        rows = torch.cat(parts, dim=1)
        if torch.equal(rows[0], rows[1]) and torch.equal(rows[0], rows[2]):
            rows = rows[0]
        return device_tensor(rows, self.device)

    def inlay(self, embeds: torch.Tensor, inlays: list[Inlay]) -> torch.Tensor:
        """Scatter encoder outputs into `embeds` (encoding the items not cached yet)."""
        self._encode_missing(inlays)
        rows, values = [], []
        for inlay in inlays:
            output = self.outputs[inlay.item.hash]
            rows.append(torch.arange(inlay.row, inlay.row + inlay.count))
            values.append(output[inlay.first:inlay.first + inlay.count])
            if inlay.finishes_item:
                self._release(inlay)
        index = device_tensor(torch.cat(rows), embeds.device)
        embeds[index] = torch.cat(values).to(embeds.dtype)
        return embeds

    def _encode_missing(self, inlays: list[Inlay]) -> None:
        missing: dict[str, dict[bytes, MultiModalItem]] = defaultdict(dict)
        for inlay in inlays:
            item = inlay.item
            if item.hash in self.outputs:
                continue
            if item.embeds is not None:
                self.outputs[item.hash] = device_tensor(item.embeds, self.device, self.dtype)
            else:
                missing[item.modality][item.hash] = item
        for modality, items in missing.items():
            outputs = self.model.encode(modality, list(items.values()))
            for item, output in zip(items.values(), outputs, strict=True):
                if output.shape[0] != item.length:
                    raise RuntimeError(f"{modality} encoder gave {output.shape[0]} rows for "
                                       f"{item.length} placeholders")
                self.outputs[item.hash] = output
            self.num_items_encoded += len(items)

    def _release(self, inlay: Inlay) -> None:
        users = self.consumers[inlay.item.hash]
        users.discard(inlay.owner)
        if not users:
            del self.consumers[inlay.item.hash]
            self.outputs.pop(inlay.item.hash, None)
