"""One generated continuation: its tokens, its KV blocks and how far it has been computed."""

from __future__ import annotations

import enum
import hashlib
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from intarsia.engine.outputs import Logprob, RequestMetrics
from intarsia.engine.sampling_params import SamplingParams

if TYPE_CHECKING:
    from intarsia.engine.pooler import PoolerConfig


class Status(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass
class Request:
    """What the user asked for; its `n` sequences share the prompt."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    # Set for pooling requests: they run the prompt once and return pooled hidden states.
    pooling: PoolerConfig | None = None
    mm_inputs: Any = None  # processed multimodal items, owned by the processors
    seqs: list[Sequence] = field(default_factory=list)
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    pooled: torch.Tensor | None = None
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(time.perf_counter()))

    @property
    def finished(self) -> bool:
        return all(seq.status is Status.FINISHED for seq in self.seqs)


class Sequence:
    def __init__(self, seq_id: int, request: Request, index: int, block_size: int,
                 generator: torch.Generator | None) -> None:
        self.seq_id, self.request, self.index = seq_id, request, index
        self.params = request.params
        self.token_ids: list[int] = list(request.prompt_token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.block_size = block_size
        self.generator = generator
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        # Row of this sequence's next token in the in-flight step's samples (still on the
        # device; the engine runs one step ahead of reading them), else None.
        self.pending_row: int | None = None
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # hash chain over full blocks of token_ids
        self.num_registered_blocks = 0  # leading blocks already in the prefix cache
        self.logprobs: list[dict[int, Logprob]] = []
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.text = ""
        self.detokenizer: Any = None

    @property
    def num_tokens(self) -> int:
        """Tokens known to the scheduler: those read back plus one still in flight."""
        return len(self.token_ids) + (self.pending_row is not None)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    def ends_by_length(self, num_tokens: int, max_model_len: int) -> bool:
        """Whether a sequence of `num_tokens` tokens is done by length: `max_tokens`
        outputs (max_model_len if unset) or a full context."""
        max_outputs = self.params.max_tokens or max_model_len
        return num_tokens - self.num_prompt_tokens >= max_outputs or num_tokens >= max_model_len

    @property
    def prefix_len(self) -> int:
        """Prompt tokens attended bidirectionally (a prefix-LM model's prefix), else 0."""
        return getattr(self.request.mm_inputs, "prefix_len", 0)

    @property
    def is_prefill_done(self) -> bool:
        return self.num_computed_tokens >= self.num_prompt_tokens

    def full_block_hashes(self) -> list[bytes]:
        """Extend and return the hash chain over this sequence's full blocks.

        Each hash covers the block's token ids, its parent's hash, and the
        multimodal item hashes overlapping it, so equal text next to different
        images never shares a block. In a bidirectional prefix every token's KV depends
        on the whole prefix, so such a chain starts from a hash of the whole prefix.
        """
        bs = self.block_size
        mm = self.request.mm_inputs
        for i in range(len(self.block_hashes), len(self.token_ids) // bs):
            digest = hashlib.blake2b(digest_size=16)
            digest.update(self.block_hashes[-1] if self.block_hashes else self._root_hash())
            digest.update(array("q", self.token_ids[i * bs:(i + 1) * bs]).tobytes())
            if mm is not None:
                for item_hash in mm.hashes_in_range(i * bs, (i + 1) * bs):
                    digest.update(item_hash)
            self.block_hashes.append(digest.digest())
        return self.block_hashes

    def _root_hash(self) -> bytes:
        prefix = self.prefix_len
        if not prefix:
            return b"root"
        digest = hashlib.blake2b(digest_size=16)
        digest.update(array("q", self.token_ids[:prefix]).tobytes())
        for item_hash in self.request.mm_inputs.hashes_in_range(0, prefix):
            digest.update(item_hash)
        return digest.digest()
