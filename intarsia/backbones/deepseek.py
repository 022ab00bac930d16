"""Decoders with multi-head latent attention (`backbones/mla.py`): DeepSeek-V2 (with
DeepSeek-MoE: shared experts, group-limited routing, dense first layers) and MiniCPM3
(dense, with MiniCPM's embedding, depth and logit scaling)."""

from __future__ import annotations

import math

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap
from intarsia.backbones.mla import LatentAttentionDecoderLayer, mla_args
from intarsia.backbones.moe import PER_EXPERT_SHARDS, STACKED_EXPERT_RENAMES, MoEArgs
from intarsia.engine.registry import register

_TOPK_METHODS = ("greedy", "group_limited_greedy")


def deepseek_moe(config) -> MoEArgs:
    if config.topk_method not in _TOPK_METHODS:
        raise ValueError(f"unsupported DeepSeek topk_method {config.topk_method!r}; known: {_TOPK_METHODS}")
    if getattr(config, "scoring_func", "softmax") != "softmax":
        raise ValueError(f"unsupported DeepSeek scoring_func {config.scoring_func!r}; V2 uses softmax")
    grouped = config.topk_method == "group_limited_greedy"
    every = getattr(config, "moe_layer_freq", 1) or 1
    return MoEArgs(
        num_experts=config.n_routed_experts, top_k=config.num_experts_per_tok,
        intermediate_size=config.moe_intermediate_size,
        topk_norm=1.0 if config.norm_topk_prob else None, routed_scale=config.routed_scaling_factor,
        num_groups=config.n_group if grouped else None, topk_groups=config.topk_group if grouped else None,
        shared_intermediate_size=config.moe_intermediate_size * (config.n_shared_experts or 0),
        dense_layers=frozenset(i for i in range(config.num_hidden_layers)
                               if i < config.first_k_dense_replace or i % every != 0))


@register("DeepseekV2ForCausalLM")
class DeepseekV2ForCausalLM(CausalLM):
    """MLA with GPT-J-style (interleaved) rotary on the rope head dims, usually yarn-scaled."""

    weight_map = WeightMap(renames=((r"\.mlp\.shared_experts\.", ".mlp.shared_expert."),
                                    *STACKED_EXPERT_RENAMES),
                           indexed_shards=PER_EXPERT_SHARDS)
    layer_cls = LatentAttentionDecoderLayer

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        return mla_args(config, max_positions, is_neox=False, moe=deepseek_moe(config))


@register("MiniCPM3ForCausalLM")
class MiniCPM3ForCausalLM(CausalLM):
    """MLA with neox rotary; embeddings times `scale_emb`, each residual branch times
    ``scale_depth / sqrt(layers)``, logits divided by ``hidden_size / dim_model_base``."""

    layer_cls = LatentAttentionDecoderLayer

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        return mla_args(config, max_positions, is_neox=True, embed_scale=config.scale_emb,
                        residual_scale=config.scale_depth / math.sqrt(config.num_hidden_layers),
                        logit_scale=config.dim_model_base / config.hidden_size,
                        tie_word_embeddings=getattr(config, "tie_word_embeddings", True))
