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


class StepBuffers:
    """A step's inputs where the graphs read them: on the device (the graphs' static
    inputs), or in pinned host memory, where `fill` writes a step before one copy each.

    Decode entry i is sequence i, on row i. A mixed step's prefill sequences (after its
    decodes) are entries of their own: `prefill_i32` row 0 holds their first rows and
    the end, row 1 their context lengths."""

    def __init__(self, rows: int, decode_entries: int, max_blocks: int, device: torch.device,
                 pin_memory: bool = False) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.int32, device=device, pin_memory=pin_memory)

        # Rows of one int64 buffer, so that a step's token inputs arrive in one copy.
        self.i64 = torch.zeros(3, rows, dtype=torch.int64, device=device, pin_memory=pin_memory)
        self.input_ids, self.positions, self.slot_mapping = self.i64
        self.slot_mapping.fill_(-1)
        self.seq_lens = zeros(decode_entries).fill_(1)
        self.block_tables = zeros(decode_entries, max_blocks)
        self.query_start_loc = torch.arange(decode_entries + 1, dtype=torch.int32, device=device)
        self.prefill_i32 = zeros(2, MAX_GRAPH_PREFILLS + 1)
        self.prefill_tables = zeros(MAX_GRAPH_PREFILLS, max_blocks)

    def decode_metadata(self, size: int, max_seq_len: int, rows: int | None = None) -> AttentionMetadata:
        """`size` decode entries over the first `rows` rows (default `size`). Kernels size
        their KV split from the host value `max_seq_len`: pass the longest possible."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:rows or size], query_start_loc=self.query_start_loc[:size + 1],
            seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size], max_query_len=1,
            max_seq_len=max_seq_len, query_start_loc_cpu=list(range(size + 1)), seq_lens_cpu=[1] * size)

    def mixed_metadata(self, tokens: int, max_seq_len: int) -> AttentionMetadata:
        """`tokens` rows: a decode entry for each row up to the buffers' decode entries,
        then MAX_GRAPH_PREFILLS prefill entries. The step is described by its parts."""
        decodes = self.decode_metadata(min(tokens, self.seq_lens.numel()), max_seq_len, rows=tokens)
        prefills = AttentionMetadata(
            slot_mapping=self.slot_mapping[:tokens], query_start_loc=self.prefill_i32[0],
            seq_lens=self.prefill_i32[1, :MAX_GRAPH_PREFILLS], block_tables=self.prefill_tables,
            max_query_len=tokens, max_seq_len=max_seq_len,
            query_start_loc_cpu=[0] * (MAX_GRAPH_PREFILLS + 1), seq_lens_cpu=[0] * MAX_GRAPH_PREFILLS)
        return dataclasses.replace(prefills, parts=(decodes, prefills))

    def fill(self, key: GraphKey, input_ids: list[int], positions: list[int], slots: list[int],
             starts: list[int], seq_lens: list[int], tables: list[list[int]], num_decodes: int) -> None:
        """Write a step (host lists; its first `num_decodes` sequences have one row each)
        in graph `key`'s layout. Host buffers only."""
        n, d, size = len(input_ids), num_decodes, key[1]
        ids = self.i64.numpy()
        ids[0, :n], ids[1, :n], ids[2, :n] = input_ids, positions, slots
        ids[2, n:size] = -1  # padding rows write no KV
        # Unused decode entries: a context of 1 in a decode graph (its row is padding), of
        # 0 in a mixed graph (its row may be a prefill's, which must not be written).
        lens, width = self.seq_lens.numpy(), len(tables[0])
        lens[:d], lens[d:self.decode_entries(key)] = seq_lens[:d], 1 if key[0] == "decode" else 0
        if d:  # (numpy cannot broadcast an empty list into a [0, width] slice)
            self.block_tables.numpy()[:d, :width] = tables[:d]
        if key[0] == "mixed":
            p = len(seq_lens) - d
            prefill = self.prefill_i32.numpy()
            prefill[0, :p + 1], prefill[0, p + 1:] = starts[d:], starts[-1]
            prefill[1, :p], prefill[1, p:] = seq_lens[d:], 0
            self.prefill_tables.numpy()[:p, :width] = tables[d:]

    def copy_from(self, host: StepBuffers, key: GraphKey, num_decodes: int, num_seqs: int,
                  width: int) -> None:
        """Asynchronous copies of what `host.fill` wrote for a step of `num_seqs` sequences
        whose block tables are `width` wide."""
        d, size, entries = num_decodes, key[1], self.decode_entries(key)
        self.i64[:, :size].copy_(host.i64[:, :size], non_blocking=True)
        self.seq_lens[:entries].copy_(host.seq_lens[:entries], non_blocking=True)
        self.block_tables[:d, :width].copy_(host.block_tables[:d, :width], non_blocking=True)
        if key[0] == "mixed":
            p = num_seqs - d
            self.prefill_i32.copy_(host.prefill_i32, non_blocking=True)
            self.prefill_tables[:p, :width].copy_(host.prefill_tables[:p, :width], non_blocking=True)

    def decode_entries(self, key: GraphKey) -> int:
        """How many decode entries graph `key` runs."""
        return key[1] if key[0] == "decode" else min(key[1], self.seq_lens.numel())


class StepGraphs:
    def __init__(self, run_model: Callable[[torch.Tensor, torch.Tensor, ForwardContext], torch.Tensor],
                 kv_caches: list[tuple[torch.Tensor, torch.Tensor]], max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int, block_size: int,
                 device: torch.device, mixed: bool = True) -> None:
        self.sizes = capture_sizes(max_num_seqs)
        self.max_size = self.sizes[-1]
        self.token_sizes = mixed_token_sizes(max_num_batched_tokens) if mixed else []
        shape = (max([self.max_size, *self.token_sizes]), self.max_size, -(-max_model_len // block_size))
        self.static = StepBuffers(*shape, device)
        self.row_index = torch.arange(self.max_size, device=device)  # sample rows of a decode step
        # Two sets of pinned staging buffers, used in turn: the engine prepares a step
        # while the previous one (whose copies may not have run yet) is queued.
        self.host = [StepBuffers(*shape, torch.device("cpu"), pin_memory=True) for _ in range(2)]
        self.turn = 0
        self.graphs: dict[GraphKey, tuple[torch.cuda.CUDAGraph, torch.Tensor, AttentionMetadata]] = {}
        keys = [("decode", s) for s in self.sizes] + [("mixed", t) for t in self.token_sizes]
        pool = None
        for key in sorted(keys, key=lambda k: -k[1]):  # most rows first: the others reuse its pool
            meta = (self.static.decode_metadata(key[1], max_model_len) if key[0] == "decode"
                    else self.static.mixed_metadata(key[1], max_model_len))
            ctx = ForwardContext(meta, kv_caches)
            args = (self.static.input_ids[:key[1]], self.static.positions[:key[1]], ctx)
            run_model(*args)  # warm-up: autotuning and lazy allocations stay out of the graph
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                hidden = run_model(*args)
            pool = graph.pool() if pool is None else pool
            self.graphs[key] = (graph, hidden, meta)
        torch.cuda.synchronize(device)

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
        """Write a step's inputs into graph `key`'s static buffers (through pinned host
        memory, a few asynchronous copies); views of its token ids and positions."""
        host = self.host[self.turn]
        self.turn ^= 1
        host.fill(key, input_ids, positions, slots, starts, seq_lens, tables, num_decodes)
        self.static.copy_from(host, key, num_decodes, len(seq_lens), len(tables[0]))
        n = len(input_ids)
        return self.static.input_ids[:n], self.static.positions[:n]

    def metadata(self, key: GraphKey) -> AttentionMetadata:
        """What graph `key`'s kernels read (its static buffers)."""
        return self.graphs[key][2]

    def run(self, key: GraphKey, num_rows: int) -> torch.Tensor:
        """Replay graph `key` for a step staged by `stage`; hidden states of its rows."""
        graph, hidden, _ = self.graphs[key]
        graph.replay()
        return hidden[:num_rows]
