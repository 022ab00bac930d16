"""StableLM (2): LayerNorm, partial rotary, gated SiLU MLP, optional q/k/v bias, optional
per-head LayerNorm on q and k, optional parallel attention + MLP behind one norm."""

from __future__ import annotations

from intarsia.backbones.blocks import ParallelDecoderLayer
from intarsia.backbones.decoder import CausalLM, DecoderArgs, DecoderLayer, WeightMap, llama_like_args
from intarsia.engine.registry import register


def stablelm_args(config, max_positions: int) -> DecoderArgs:
    return llama_like_args(config, max_positions, norm="layer", qkv_bias=config.use_qkv_bias,
                           o_bias=False, qk_norm="per_head" if config.qk_layernorm else None)


@register("StableLmForCausalLM", "StableLMEpochForCausalLM")
class StableLmForCausalLM(CausalLM):
    adapt = staticmethod(stablelm_args)
    weight_map = WeightMap(indexed_shards=(
        # One bias-free LayerNorm per head: `q_layernorm.norms.<head>.weight`.
        (r"\.q_layernorm\.norms\.(\d+)\.", ".q_norm.", r"\1"),
        (r"\.k_layernorm\.norms\.(\d+)\.", ".k_norm.", r"\1"),
    ))

    def __init__(self, config, max_positions: int) -> None:
        self.layer_cls = ParallelDecoderLayer if config.use_parallel_residual else DecoderLayer
        super().__init__(config, max_positions)
