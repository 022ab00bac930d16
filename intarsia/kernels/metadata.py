"""What one forward step tells the attention kernels about its flattened batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Describes a varlen batch: sequence i owns query rows
    ``query_start_loc[i]:query_start_loc[i+1]``, which are the *last* rows of its
    ``seq_lens[i]`` context tokens; the earlier ones are already in the paged cache.

    KV caches are ``[num_blocks, block_size, num_kv_heads, head_dim]``; token ``t``
    of sequence ``i`` lives in block ``block_tables[i, t // block_size]``.
    """

    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token, -1 = skip
    query_start_loc: torch.Tensor  # [batch + 1] int32
    seq_lens: torch.Tensor  # [batch] int32, context length after this step
    block_tables: torch.Tensor  # [batch, max_blocks_per_seq] int32
    max_query_len: int
    max_seq_len: int
    # Host copies, so the torch reference never synchronises with the device.
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    # Prefix-LM models (PaliGemma): keys at positions < prefix_lens[i] are visible to the
    # queries of sequence i at positions < prefix_lens[i] as well (bidirectional prefix).
    # None for every other model; the scheduler computes a prefix in one chunk.
    prefix_lens: torch.Tensor | None = None  # [batch] int32
    prefix_lens_cpu: list[int] | None = None
    # A mixed step whose first sequences are one-token decodes: (decode part, rest), so
    # that the GPU runs the decode rows through the split-KV decode kernel. Both parts
    # index the step's rows (their query_start_loc are rows of the whole step).
    parts: tuple[AttentionMetadata, AttentionMetadata] | None = None

    def split_decodes(self, num_decodes: int, decode_max_seq_len: int) -> None:
        """Describe the first `num_decodes` sequences (one query row each) and the rest
        as two batches of their own, in `parts`. The decode part claims
        `decode_max_seq_len` (max_model_len), the bound the CUDA graphs were captured
        with, so it reuses their compiled kernels instead of compiling new variants."""
        d, starts, lens = num_decodes, self.query_start_loc_cpu, self.seq_lens_cpu
        decodes = AttentionMetadata(
            slot_mapping=self.slot_mapping[:d], query_start_loc=self.query_start_loc[:d + 1],
            seq_lens=self.seq_lens[:d], block_tables=self.block_tables[:d], max_query_len=1,
            max_seq_len=decode_max_seq_len, query_start_loc_cpu=starts[:d + 1], seq_lens_cpu=lens[:d])
        rest = AttentionMetadata(
            slot_mapping=self.slot_mapping[d:], query_start_loc=self.query_start_loc[d:],
            seq_lens=self.seq_lens[d:], block_tables=self.block_tables[d:],
            max_query_len=self.max_query_len, max_seq_len=max(lens[d:]),
            query_start_loc_cpu=starts[d:], seq_lens_cpu=lens[d:])
        self.parts = (decodes, rest)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)
