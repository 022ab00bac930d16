"""Owns the model and its KV cache; runs one flattened varlen batch per step."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.engine.config import EngineConfig
from intarsia.engine.encoder_runner import EncoderRunner
from intarsia.engine.loader import iterate_weights
from intarsia.engine.scheduler import ScheduledSeq
from intarsia.kernels import AttentionMetadata

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
    inlays: list | None = None  # multimodal: encoder output rows to inlay this step


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

    def _bytes_per_block(self) -> int:
        elem = torch.tensor([], dtype=self.config.dtype).element_size()
        return 2 * self.num_layers * self.config.block_size * self.kv_shape[0] * self.kv_shape[1] * elem

    def _default_num_blocks(self) -> int:
        c = self.config
        wanted = c.max_num_seqs * -(-c.max_model_len // c.block_size)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            free, _ = torch.cuda.mem_get_info(self.device)
            total = torch.cuda.get_device_properties(self.device).total_memory
            # Leave (1 - utilization) of the card plus room for activations of one step.
            reserve = total * (1 - c.gpu_memory_utilization) + self._activation_bytes()
            return min(wanted, max(int((free - reserve) // self._bytes_per_block()), 0))
        return min(wanted, max(_CPU_KV_CACHE_BYTES // self._bytes_per_block(), 1))

    def _activation_bytes(self) -> int:
        args = self.model.args
        tokens = self.config.max_num_batched_tokens
        elem = torch.tensor([], dtype=self.config.dtype).element_size()
        widest = max(args.intermediate_size * 2, (args.num_heads + 2 * args.num_kv_heads) * args.head_dim)
        logits = self.config.max_num_seqs * args.vocab_size * 8
        return tokens * (widest + 4 * args.hidden_size) * elem * 2 + logits

    def prepare(self, scheduled: list[ScheduledSeq]) -> StepBatch:
        bs = self.config.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        starts, seq_lens = [0], []
        sample_rows, sample_seqs, prompt_rows, pool_rows = [], [], [], []
        for item in scheduled:
            seq, n = item.seq, item.num_new_tokens
            begin = seq.num_computed_tokens
            input_ids.extend(seq.token_ids[begin:begin + n])
            positions.extend(range(begin, begin + n))
            table = seq.block_table
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
            return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

        attn = AttentionMetadata(
            slot_mapping=dev(slots, torch.int64), query_start_loc=dev(starts, torch.int32),
            seq_lens=dev(seq_lens, torch.int32), block_tables=dev(tables, torch.int32),
            max_query_len=max(item.num_new_tokens for item in scheduled),
            max_seq_len=max(seq_lens), query_start_loc_cpu=starts, seq_lens_cpu=seq_lens)
        batch = StepBatch(dev(input_ids, torch.int64), dev(positions, torch.int64), attn,
                          dev(sample_rows, torch.int64), sample_seqs, prompt_rows, pool_rows)
        if self.encoders is not None:  # multimodal: encoder inlays and M-RoPE positions
            batch.inlays = self.encoders.plan(scheduled, starts) or None
            if self.encoders.uses_mrope:
                batch.positions = self.encoders.positions(scheduled)
        return batch

    @torch.inference_mode()
    def forward(self, batch: StepBatch) -> torch.Tensor:
        """Hidden states of every row of the flattened batch."""
        ctx = ForwardContext(batch.attn, self.kv_caches)
        embeds = self.model.embed(batch.input_ids)
        if batch.inlays:
            embeds = self.encoders.inlay(embeds, batch.inlays)
        return self.model(batch.positions, embeds, ctx)

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(hidden)
