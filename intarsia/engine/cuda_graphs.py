"""Decode steps replayed as CUDA graphs, one graph per padded batch size.

A decode step launches a few hundred small kernels; on the GPU their launch cost
exceeds their run time. Each graph is captured once over static input buffers;
a step stages its inputs into them from pinned host memory, pads the batch to
the next captured size (padding rows write no KV: slot -1) and replays.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from intarsia.backbones.context import ForwardContext
from intarsia.kernels import AttentionMetadata


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [s for s in sizes if s < max_num_seqs] + [min(max_num_seqs, 512)]


class HostStaging:
    """Pinned host buffers a step's inputs are written to before one copy each."""

    def __init__(self, max_size: int, max_blocks: int) -> None:
        self.i64 = torch.zeros(3, max_size, dtype=torch.int64, pin_memory=True)  # ids, positions, slots
        self.seq_lens = torch.ones(max_size, dtype=torch.int32, pin_memory=True)
        self.tables = torch.zeros(max_size, max_blocks, dtype=torch.int32, pin_memory=True)


class DecodeGraphs:
    def __init__(self, run_model: Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor],
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_num_seqs: int,
                 max_model_len: int, block_size: int, device: torch.device) -> None:
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = self.sizes[-1]
        max_blocks = -(-max_model_len // block_size)
        n = self.max_size
        # Rows of one int64 buffer, so that a step's inputs arrive in one copy.
        self.static_i64 = torch.zeros(3, n, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.static_i64
        self.slot_mapping.fill_(-1)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.row_index = torch.arange(n, device=device)  # sample rows of a decode step
        # Two sets of pinned staging buffers, used in turn: the engine prepares a step
        # while the previous one (whose copies may not have run yet) is queued.
        self.host = [HostStaging(n, max_blocks) for _ in range(2)]
        self.turn = 0
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

    def accepts(self, num_seqs: int, max_query_len: int) -> bool:
        return max_query_len == 1 and num_seqs <= self.max_size

    def stage(self, input_ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
              tables: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        """Write a decode step's inputs into the static buffers (through pinned host memory,
        a few asynchronous copies) and return views of them for `run`."""
        n = len(input_ids)
        size = next(s for s in self.sizes if s >= n)
        staging = self.host[self.turn]
        self.turn ^= 1
        host = staging.i64.numpy()
        host[0, :n], host[1, :n], host[2, :n] = input_ids, positions, slots
        host[2, n:size] = -1  # padding rows write no KV
        lens = staging.seq_lens.numpy()
        lens[:n], lens[n:size] = seq_lens, 1
        width = len(tables[0])
        staging.tables.numpy()[:n, :width] = tables
        self.static_i64[:, :size].copy_(staging.i64[:, :size], non_blocking=True)
        self.seq_lens[:size].copy_(staging.seq_lens[:size], non_blocking=True)
        self.block_tables[:n, :width].copy_(staging.tables[:n, :width], non_blocking=True)
        meta = AttentionMetadata(
            slot_mapping=self.slot_mapping[:n], query_start_loc=self.query_start_loc[:n + 1],
            seq_lens=self.seq_lens[:n], block_tables=self.block_tables[:n, :width], max_query_len=1,
            max_seq_len=max(seq_lens), query_start_loc_cpu=list(range(n + 1)), seq_lens_cpu=seq_lens)
        meta.graph_size = size
        return self.input_ids[:n], self.positions[:n], meta

    def run(self, meta: AttentionMetadata) -> torch.Tensor:
        """Replay the graph for a step staged by `stage`; hidden states of its rows."""
        graph, hidden = self.graphs[meta.graph_size]
        graph.replay()
        return hidden[:meta.num_seqs]
