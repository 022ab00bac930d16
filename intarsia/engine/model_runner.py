"""Owns the model and its KV cache; runs one flattened varlen batch per step."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.engine.config import EngineConfig
from intarsia.engine.cuda_graphs import GraphKey, StepGraphs
from intarsia.engine.encoder_runner import EncoderRunner
from intarsia.engine.loader import iterate_weights
from intarsia.engine.scheduler import ScheduledSeq
from intarsia.kernels import AttentionMetadata
from intarsia.transfer import device_tensor

_CPU_KV_CACHE_BYTES = 2 << 30  # default KV budget on the CPU


@dataclass
class StepBatch:
    """The host-side description of one step, turned into device tensors by `prepare`."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn: AttentionMetadata
    sample_rows: torch.Tensor  # flattened row of each sequence's last token, for sampling
    sample_seqs: list[ScheduledSeq]
    prompt_logprob_rows: list[tuple[ScheduledSeq, int, int]]  # (item, first row, count)
    # Pooling requests' rows of this step, (item, first row, count); they are never sampled.
    pool_rows: list[tuple[ScheduledSeq, int, int]] = field(default_factory=list)
    # Decode rows whose input token is still in flight: (row, its row in the previous
    # step's samples), patched in on the device by `prepare`.
    pending_inputs: list[tuple[int, int]] = field(default_factory=list)
    inlays: list | None = None  # multimodal: encoder output rows to inlay this step
    graph: GraphKey | None = None  # set when the inputs sit in this CUDA graph's buffers


def build_model(config: EngineConfig) -> nn.Module:
    """Instantiate the registered class on the target device and fill its weights."""
    torch.set_default_dtype(config.dtype)
    try:
        with torch.device(config.device):
            model = config.entry.cls(config.hf_config, config.max_model_len)
    finally:
        torch.set_default_dtype(torch.float32)
    if config.load_format == "dummy":
        generator = torch.Generator(config.device).manual_seed(config.seed)
        for param in model.parameters():
            param.data.normal_(0, 0.02, generator=generator)
    else:
        model.load_weights(iterate_weights(config.model_path))
    return model.eval()


class ModelRunner:
    def __init__(self, config: EngineConfig, model: nn.Module | None = None) -> None:
        self.config = config
        self.device = config.device
        self.model = model if model is not None else build_model(config)
        self.encoders = (EncoderRunner(self.model, self.device, config.dtype)
                         if config.entry.multimodal else None)
        self.prefix_lm = getattr(self.model, "prefix_lm", False)  # bidirectional prompt prefixes
        args = self.model.args if hasattr(self.model, "args") else None
        self.num_layers = args.num_layers
        self.kv_shape = (args.num_kv_heads, args.head_dim)
        self.num_blocks = config.num_kv_blocks or self._default_num_blocks()
        min_blocks = -(-config.max_model_len // config.block_size)
        if self.num_blocks < min_blocks:
            raise ValueError(f"KV cache of {self.num_blocks} blocks cannot hold one sequence of "
                             f"max_model_len={config.max_model_len}; lower max_model_len")
        shape = (self.num_layers, 2, self.num_blocks, config.block_size, *self.kv_shape)
        self.kv_cache = torch.zeros(shape, dtype=config.dtype, device=self.device)
        self.kv_caches = [(self.kv_cache[i, 0], self.kv_cache[i, 1]) for i in range(self.num_layers)]
        self.graphs = None
        if self.device.type == "cuda":
            self._compile_kernel_variants()
        if self.device.type == "cuda" and not config.enforce_eager and os.environ.get(
                "INTARSIA_KERNELS") != "torch":  # the torch reference reads host lists: no graphs
            # Mixed steps run the text model alone: not with encoder inlays or M-RoPE
            # prompt positions, nor with bidirectional prefixes.
            mixed = self.encoders is None and not self.prefix_lm
            self.graphs = StepGraphs(self._run_model, self.kv_caches, config.max_num_seqs,
                                     config.max_num_batched_tokens, config.max_model_len,
                                     config.block_size, self.device, mixed)

    def _bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.config.dtype).element_size()
        return 2 * self.num_layers * self.config.block_size * self.kv_shape[0] * self.kv_shape[1] * elem

    def _default_num_blocks(self) -> int:
        c = self.config
        wanted = c.max_num_seqs * -(-c.max_model_len // c.block_size)
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            budget = total * c.gpu_memory_utilization - self._profile_peak_bytes()
            return min(wanted, max(int(budget // self._bytes_per_block()), 0))
        return min(wanted, max(_CPU_KV_CACHE_BYTES // self._bytes_per_block(), 1))

    @torch.inference_mode()
    def _profile_peak_bytes(self) -> int:
        """Peak memory of the weights plus the largest step (a full token budget of
        prefill, logits for every sequence), measured by running it once over a
        throw-away KV cache just big enough for it."""
        c = self.config
        tokens = c.max_num_batched_tokens
        chunk = min(tokens, c.max_model_len)
        lens = [chunk] * (tokens // chunk) + ([tokens % chunk] if tokens % chunk else [])
        blocks_per_seq = -(-chunk // c.block_size)
        shape = (self.num_layers, 2, blocks_per_seq * len(lens), c.block_size, *self.kv_shape)
        scratch = torch.zeros(shape, dtype=c.dtype, device=self.device)
        tables = torch.arange(shape[2], dtype=torch.int32, device=self.device).view(len(lens), -1)
        # Sequence i owns the consecutive blocks of row i of `tables`.
        slots = torch.cat([torch.arange(n, device=self.device) + i * blocks_per_seq * c.block_size
                           for i, n in enumerate(lens)])
        kv_caches = [(scratch[i, 0], scratch[i, 1]) for i in range(self.num_layers)]
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._run_dummy_step(lens, lens, slots, tables, kv_caches, num_logits=min(c.max_num_seqs, tokens))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - scratch.numel() * scratch.element_size()
        del scratch, kv_caches
        torch.cuda.empty_cache()
        return peak

    def prepare(self, scheduled: list[ScheduledSeq], prev_tokens: torch.Tensor | None = None) -> StepBatch:
        """Device inputs of a step. A decode row whose input token is still in flight (the
        sequence's `pending_row` of `prev_tokens`, the previous step's samples on the
        device) gets it there, without a round trip through the host."""
        batch = self._prepare(scheduled)
        if batch.pending_inputs:
            rows, sources = zip(*batch.pending_inputs, strict=True)
            batch.input_ids[device_tensor(rows, self.device, torch.int64)] = prev_tokens[
                device_tensor(sources, self.device, torch.int64)]
        return batch

    def _prepare(self, scheduled: list[ScheduledSeq]) -> StepBatch:
        bs = self.config.block_size
        # Decode rows first (stable), so a mixed step can hand them to the decode kernel.
        scheduled = sorted(scheduled, key=lambda item: item.num_new_tokens > 1)
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, seq_lens = [0], []
        sample_rows, sample_seqs, prompt_rows, pool_rows = [], [], [], []
        pending_inputs = []  # (row, row of the token in the previous step's samples)
        for item in scheduled:
            seq, n = item.seq, item.num_new_tokens
            begin = seq.num_computed_tokens
            table = seq.block_table
            if n == 1:  # decode rows dominate large batches: skip the range machinery
                if seq.pending_row is not None:  # still in flight: `prepare` patches it in
                    pending_inputs.append((len(input_ids), seq.pending_row))
                    input_ids.append(0)
                else:
                    input_ids.append(seq.token_ids[begin])
                # M-RoPE models place generated tokens at their index + mrope_delta on all
                # three rows (prompt rows get their 3-row positions below, off the graphs).
                mm = seq.request.mm_inputs
                positions.append(begin + mm.mrope_delta if mm is not None else begin)
                slots.append(table[begin // bs] * bs + begin % bs)
            else:
                input_ids.extend(seq.token_ids[begin:begin + n])
                positions.extend(range(begin, begin + n))
                slots.extend(table[p // bs] * bs + p % bs for p in range(begin, begin + n))
            if seq.params.prompt_logprobs is not None and begin < seq.num_prompt_tokens - 1:
                count = min(n, seq.num_prompt_tokens - 1 - begin)
                prompt_rows.append((item, starts[-1], count))
            if seq.request.pooling is not None:
                pool_rows.append((item, starts[-1], n))
            starts.append(starts[-1] + n)
            seq_lens.append(begin + n)
            if item.samples and seq.request.pooling is None:
                sample_rows.append(starts[-1] - 1)
                sample_seqs.append(item)
        width = max(len(item.seq.block_table) for item in scheduled)
        tables = [item.seq.block_table + [0] * (width - len(item.seq.block_table)) for item in scheduled]

        def dev(data, dtype):
            return device_tensor(data, self.device, dtype)

        max_query_len = max(item.num_new_tokens for item in scheduled)
        num_decodes = next((i for i, item in enumerate(scheduled) if item.num_new_tokens > 1), len(scheduled))
        key = None
        if self.graphs is not None and (self.encoders is None
                                        or all(item.seq.is_prefill_done for item in scheduled)):
            key = self.graphs.key_for(len(input_ids), num_decodes, len(scheduled))
        if key is not None:
            ids_t, positions_t = self.graphs.stage(key, input_ids, positions, slots, starts, seq_lens,
                                                   tables, num_decodes)
            # A decode step usually samples every row (rows are increasing, so then they are 0..n-1).
            rows = (self.graphs.row_index[:len(sample_rows)] if key[0] == "decode"
                    and len(sample_rows) == len(scheduled) else dev(sample_rows, torch.int64))
            return StepBatch(ids_t, positions_t, self.graphs.metadata(key), rows, sample_seqs, prompt_rows,
                             pool_rows, pending_inputs, graph=key)
        attn = AttentionMetadata(
            slot_mapping=dev(slots, torch.int64), query_start_loc=dev(starts, torch.int32),
            seq_lens=dev(seq_lens, torch.int32), block_tables=dev(tables, torch.int32),
            max_query_len=max_query_len,
            max_seq_len=max(seq_lens), query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
        batch = StepBatch(dev(input_ids, torch.int64), dev(positions, torch.int64), attn,
                          dev(sample_rows, torch.int64), sample_seqs, prompt_rows, pool_rows, pending_inputs)
        if self.prefix_lm:
            prefix_lens = [item.seq.prefix_len for item in scheduled]
            attn.prefix_lens, attn.prefix_lens_cpu = dev(prefix_lens, torch.int32), prefix_lens
        elif self.device.type == "cuda" and 0 < num_decodes < len(scheduled):
            attn.split_decodes(num_decodes, self.config.max_model_len)
        if self.encoders is not None:  # multimodal: encoder inlays and M-RoPE positions
            batch.inlays = self.encoders.plan(scheduled, starts) or None
            if self.encoders.uses_mrope:
                batch.positions = self.encoders.positions(scheduled)
        return batch

    @torch.inference_mode()
    def _compile_kernel_variants(self) -> None:
        """Run a few throw-away steps of the shapes serving meets (odd and aligned token
        counts, chunks over a cached prefix, a mixed step split into decode and prefill
        parts), so that Triton compiles its kernel variants now and not mid-run, where
        each costs seconds. Nothing is written to the cache (slots are -1)."""
        c = self.config
        for seq_lens, q_lens in (([17], [17]), ([32], [32]), ([40, 23], [8, 23]),
                                 ([30, 30, 30, 50], [1, 1, 1, 17])):
            if max(seq_lens) > c.max_model_len:
                continue
            slots = torch.full((sum(q_lens),), -1, dtype=torch.int64, device=self.device)
            tables = torch.zeros(len(seq_lens), -(-max(seq_lens) // c.block_size), dtype=torch.int32,
                                 device=self.device)
            self._run_dummy_step(seq_lens, q_lens, slots, tables, self.kv_caches, num_logits=1)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_dummy_step(self, seq_lens: list[int], q_lens: list[int], slots: torch.Tensor,
                        tables: torch.Tensor, kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
                        num_logits: int) -> None:
        """Run the model once over a made-up batch (token ids 0): sequence i has
        `seq_lens[i]` context tokens, the last `q_lens[i]` of them new, and a mixed step
        (leading one-token rows) is split as `prepare` splits it."""
        starts = [0, *itertools.accumulate(q_lens)]
        meta = AttentionMetadata(
            slot_mapping=slots, query_start_loc=torch.tensor(starts, dtype=torch.int32, device=self.device),
            seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=self.device), block_tables=tables,
            max_query_len=max(q_lens), max_seq_len=max(seq_lens), query_start_loc_cpu=starts,
            seq_lens_cpu=list(seq_lens))
        if q_lens[0] == 1 and max(q_lens) > 1 and not self.prefix_lm:
            meta.split_decodes(q_lens.count(1), self.config.max_model_len)
        positions = torch.cat([torch.arange(n - q, n, device=self.device)
                               for n, q in zip(seq_lens, q_lens, strict=True)])
        if self.encoders is not None and self.encoders.uses_mrope:
            positions = positions.expand(3, -1).contiguous()
        ids = torch.zeros(starts[-1], dtype=torch.int64, device=self.device)
        hidden = self._run_model(ids, positions, ForwardContext(meta, kv_caches))
        if getattr(self.model, "has_lm_head", True):  # pooling models have no logits
            self.model.compute_logits(hidden[:num_logits])

    def _run_model(self, input_ids: torch.Tensor, positions: torch.Tensor,
                   ctx: ForwardContext) -> torch.Tensor:
        return self.model(positions, self.model.embed(input_ids), ctx)

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states of every row of the flattened batch."""
        if batch.graph is not None:
            return self.graphs.run(batch.graph, len(batch.input_ids))
        ctx = ForwardContext(batch.attn, self.kv_caches)
        embeds = self.model.embed(batch.input_ids)
        if batch.inlays:
            embeds = self.encoders.inlay(embeds, batch.inlays)
        return self.model(batch.positions, embeds, ctx)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)
