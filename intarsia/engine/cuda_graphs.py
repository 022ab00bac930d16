"""Decode steps replayed as CUDA graphs, one graph per padded batch size.

A decode step launches a few hundred small kernels; on the GPU their launch cost
exceeds their run time. Each graph is captured once over static input buffers;
a step copies its inputs into them, pads the batch to the next captured size
(padding rows write no KV: slot -1) and replays.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from intarsia.backbones.context import ForwardContext
from intarsia.kernels import AttentionMetadata


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [s for s in sizes if s < max_num_seqs] + [min(max_num_seqs, 512)]


class DecodeGraphs:
    def __init__(self, run_model: Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor],
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_num_seqs: int,
                 max_model_len: int, block_size: int, device: torch.device) -> None:
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = self.sizes[-1]
        max_blocks = -(-max_model_len // block_size)
        n = self.max_size
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        pool = None
        for size in reversed(self.sizes):  # largest first, so smaller ones reuse its pool
            meta = AttentionMetadata(
                slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc[:size + 1],
                seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size], max_query_len=1,
                # Kernels size their KV split from this host value: use the longest possible.
                max_seq_len=max_model_len, query_start_loc_cpu=list(range(size + 1)),
                seq_lens_cpu=[1] * size)
            ctx = ForwardContext(meta, kv_caches)
            args = (self.input_ids[:size], self.positions[:size], ctx)
            run_model(*args)  # warm-up: autotuning and lazy allocations stay out of the graph
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = run_model(*args)
            pool = graph.pool() if pool is None else pool
            self.graphs[size] = (graph, hidden)
        torch.cuda.synchronize(device)

    def can_run(self, meta: AttentionMetadata, positions: torch.Tensor) -> bool:
        return meta.max_query_len == 1 and meta.num_seqs <= self.max_size and positions.dim() == 1

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        n = meta.num_seqs
        size = next(s for s in self.sizes if s >= n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:size].fill_(1)
        self.block_tables[:n, :width].copy_(meta.block_tables)
        graph, hidden = self.graphs[size]
        graph.replay()
        return hidden[:n]
