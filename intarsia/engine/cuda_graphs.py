"""Steps replayed as CUDA graphs, captured once over static input buffers.

A step launches a few hundred small kernels, and from Python each launch costs more
host time than most of them take on the GPU. Two families of graphs:

- decode: one new token per sequence, the batch padded to the next captured size
  (padding rows write no KV: slot -1);
- mixed: the steps of serving, where running decodes meet a new prompt or a prefill
  chunk. The rows (decodes first) are padded to the next captured token count; the
  decode part has a program for every row the bucket could hold as a decode (those
  without a sequence see a context of length 0 and do nothing), the prefill part a
  fixed number of sequence entries (unused ones have no query rows).

A step writes its inputs to pinned host memory, copies them into the buffers
asynchronously and replays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from intarsia.backbones.context import ForwardContext
from intarsia.kernels import AttentionMetadata

MAX_GRAPH_PREFILLS = 8  # sequences with several new tokens that a captured mixed step takes
_MAX_MIXED_TOKENS = 2048  # beyond this a step's GPU time dwarfs its launch cost

GraphKey = tuple[str, int]  # ("decode", batch size) or ("mixed", token count)


def capture_sizes(max_num_seqs: int) -> list[int]:
    sizes = [1, 2, 4, 8] + list(range(16, 257, 16)) + list(range(288, 513, 32))
    return [s for s in sizes if s < max_num_seqs] + [min(max_num_seqs, 512)]


def mixed_token_sizes(max_num_batched_tokens: int) -> list[int]:
    top = min(max_num_batched_tokens, _MAX_MIXED_TOKENS)
    return [s for s in (128, 256, 384, 512, 768, 1024, 1536) if s < top] + [top]


class HostStaging:
    """Pinned host mirrors of the graphs' input buffers, written before one copy each."""

    def __init__(self, max_rows: int, max_decodes: int, max_blocks: int) -> None:
        self.i64 = torch.zeros(3, max_rows, dtype=torch.int64, pin_memory=True)  # ids, positions, slots
        self.seq_lens = torch.ones(max_decodes, dtype=torch.int32, pin_memory=True)
        self.tables = torch.zeros(max_decodes, max_blocks, dtype=torch.int32, pin_memory=True)
        self.prefill_i32 = torch.zeros(2, MAX_GRAPH_PREFILLS + 1, dtype=torch.int32, pin_memory=True)
        self.prefill_tables = torch.zeros(MAX_GRAPH_PREFILLS, max_blocks, dtype=torch.int32,
                                          pin_memory=True)


class StepGraphs:
    def __init__(self, run_model: Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor],
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, block_size: int,
                 device: torch.device, mixed: bool = True) -> None:
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = self.sizes[-1]
        self.token_sizes = mixed_token_sizes(max_num_batched_tokens) if mixed else []
        self.max_model_len = max_model_len
        max_blocks = -(-max_model_len // block_size)
        n = self.max_size
        rows = max([n, *self.token_sizes])
        # Rows of one int64 buffer, so that a step's token inputs arrive in one copy.
        self.static_i64 = torch.zeros(3, rows, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slot_mapping = self.static_i64
        self.slot_mapping.fill_(-1)
        # Decode rows: sequence i is row i.
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        # Prefill sequences of a mixed step: row 0 their first query rows (and the end),
        # row 1 their context lengths.
        self.prefill_i32 = torch.zeros(2, MAX_GRAPH_PREFILLS + 1, dtype=torch.int32, device=device)
        self.prefill_tables = torch.zeros(MAX_GRAPH_PREFILLS, max_blocks, dtype=torch.int32,
                                          device=device)
        self.row_index = torch.arange(n, device=device)  # sample rows of a decode step
        # Two sets of pinned staging buffers, used in turn: the engine prepares a step
        # while the previous one (whose copies may not have run yet) is queued.
        self.host = [HostStaging(rows, n, max_blocks) for _ in range(2)]
        self.turn = 0
        self.graphs: dict[GraphKey, tuple[torch.cuda.CUDAGraph, torch.Tensor, AttentionMetadata]] = {}
        keys = [("decode", s) for s in self.sizes] + [("mixed", t) for t in self.token_sizes]
        pool = None
        for key in sorted(keys, key=lambda k: -k[1]):  # most rows first: the others reuse its pool
            meta = self._decode_metadata(key[1]) if key[0] == "decode" else self._mixed_metadata(key[1])
            ctx = ForwardContext(meta, kv_caches)
            args = (self.input_ids[:key[1]], self.positions[:key[1]], ctx)
            run_model(*args)  # warm-up: autotuning and lazy allocations stay out of the graph
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = run_model(*args)
            pool = graph.pool() if pool is None else pool
            self.graphs[key] = (graph, hidden, meta)
        torch.cuda.synchronize(device)

    def _decode_metadata(self, size: int, rows: int | None = None) -> AttentionMetadata:
        """`size` decode sequences, sequence i on row i. Kernels size their KV split from
        the host value max_seq_len: the longest possible."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:rows or size], query_start_loc=self.query_start_loc[:size + 1],
            seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size], max_query_len=1,
            max_seq_len=self.max_model_len, query_start_loc_cpu=list(range(size + 1)),
            seq_lens_cpu=[1] * size)

    def _mixed_metadata(self, tokens: int) -> AttentionMetadata:
        """`tokens` rows: decode sequences on the leading rows (as many entries as rows,
        up to the decode graphs' largest batch), then up to MAX_GRAPH_PREFILLS sequences
        whose rows `prefill_i32` locates. The step is described by its parts."""
        decodes = self._decode_metadata(min(tokens, self.max_size), rows=tokens)
        prefills = AttentionMetadata(
            slot_mapping=self.slot_mapping[:tokens], query_start_loc=self.prefill_i32[0],
            seq_lens=self.prefill_i32[1, :MAX_GRAPH_PREFILLS], block_tables=self.prefill_tables,
            max_query_len=tokens, max_seq_len=self.max_model_len,
            query_start_loc_cpu=[0] * (MAX_GRAPH_PREFILLS + 1), seq_lens_cpu=[0] * MAX_GRAPH_PREFILLS)
        return dataclasses.replace(prefills, parts=(decodes, prefills))

    def key_for(self, num_tokens: int, num_decodes: int, num_seqs: int) -> GraphKey | None:
        """The graph that can run a step of `num_tokens` rows whose first `num_decodes`
        sequences (of `num_seqs`) have one row each, or None."""
        if num_decodes == num_seqs:
            fits = num_seqs <= self.max_size
            return ("decode", next(s for s in self.sizes if s >= num_seqs)) if fits else None
        if (not self.token_sizes or num_tokens > self.token_sizes[-1]
                or num_seqs - num_decodes > MAX_GRAPH_PREFILLS or num_decodes > self.max_size):
            return None
        return "mixed", next(t for t in self.token_sizes if t >= num_tokens)

    def stage(self, key: GraphKey, input_ids: list[int], positions: list[int], slots: list[int],
              starts: list[int], seq_lens: list[int], tables: list[list[int]], num_decodes: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a step's inputs into the static buffers of graph `key` (through pinned
        host memory, a few asynchronous copies); views of its token ids and positions."""
        n, d, size = len(input_ids), num_decodes, key[1]
        decode_slots = size if key[0] == "decode" else min(size, self.max_size)
        staging = self.host[self.turn]
        self.turn ^= 1
        host = staging.i64.numpy()
        host[0, :n], host[1, :n], host[2, :n] = input_ids, positions, slots
        host[2, n:size] = -1  # padding rows write no KV
        lens = staging.seq_lens.numpy()
        # Padding decode entries: a context of 1 in a decode graph (its row is padding),
        # of 0 in a mixed graph (its row may belong to a prefill: it must not be written).
        lens[:d], lens[d:decode_slots] = seq_lens[:d], 1 if key[0] == "decode" else 0
        width = len(tables[0])
        self.static_i64[:, :size].copy_(staging.i64[:, :size], non_blocking=True)
        self.seq_lens[:decode_slots].copy_(staging.seq_lens[:decode_slots], non_blocking=True)
        if d:
            staging.tables.numpy()[:d, :width] = tables[:d]
            self.block_tables[:d, :width].copy_(staging.tables[:d, :width], non_blocking=True)
        if key[0] == "mixed":
            p = len(seq_lens) - d
            prefill = staging.prefill_i32.numpy()
            prefill[0, :p + 1], prefill[0, p + 1:] = starts[d:], starts[-1]
            prefill[1, :p], prefill[1, p:] = seq_lens[d:], 0
            staging.prefill_tables.numpy()[:p, :width] = tables[d:]
            self.prefill_i32.copy_(staging.prefill_i32, non_blocking=True)
            self.prefill_tables[:p, :width].copy_(staging.prefill_tables[:p, :width], non_blocking=True)
        return self.input_ids[:n], self.positions[:n]

    def metadata(self, key: GraphKey) -> AttentionMetadata:
        """What graph `key`'s kernels read (its static buffers)."""
        return self.graphs[key][2]

    def run(self, key: GraphKey, num_rows: int) -> torch.Tensor:
        """Replay graph `key` for a step staged by `stage`; hidden states of its rows."""
        graph, hidden, _ = self.graphs[key]
        graph.replay()
        return hidden[:num_rows]
