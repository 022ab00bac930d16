"""Sparse mixture-of-experts decoders with Llama-style attention: Mixtral, Qwen2-MoE
(shared expert behind a sigmoid gate), OLMoE (q/k norm), Granite-MoE (Granite's
multipliers) and PhiMoE (sparsemixer routing, LayerNorm, longrope).

Each is `llama_like_args` plus its `MoEArgs` and the names its checkpoints use;
the block itself lives in `backbones/moe.py`.
"""

from __future__ import annotations

import torch

from intarsia.backbones.decoder import (
    CausalLM,
    DecoderArgs,
    DecoderLayer,
    SelfAttention,
    WeightMap,
    llama_like_args,
)
from intarsia.backbones.layers import RMSNorm
from intarsia.backbones.moe import PER_EXPERT_SHARDS, STACKED_EXPERT_RENAMES, MoEArgs
from intarsia.engine.registry import register

# Mixtral-style checkpoints keep the MoE block under `block_sparse_moe`.
_BLOCK_SPARSE_MOE = (r"\.block_sparse_moe\.", ".mlp.")


@register("MixtralForCausalLM")
class MixtralForCausalLM(CausalLM):
    """Mistral with every MLP a top-k mixture of experts (softmax, renormalised)."""

    weight_map = WeightMap(renames=(_BLOCK_SPARSE_MOE, *STACKED_EXPERT_RENAMES),
                           indexed_shards=PER_EXPERT_SHARDS)

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        moe = MoEArgs(num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                      intermediate_size=config.intermediate_size)
        return llama_like_args(config, max_positions, moe=moe)


@register("Qwen2MoeForCausalLM")
class Qwen2MoeForCausalLM(CausalLM):
    """Qwen2 with MoE layers (every `decoder_sparse_step`-th, except `mlp_only_layers`),
    each adding a shared expert scaled by a sigmoid gate."""

    weight_map = WeightMap(renames=STACKED_EXPERT_RENAMES, indexed_shards=PER_EXPERT_SHARDS)

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        step, dense_only = config.decoder_sparse_step, set(config.mlp_only_layers or ())
        moe = None
        if config.num_experts:
            moe = MoEArgs(
                num_experts=config.num_experts, top_k=config.num_experts_per_tok,
                intermediate_size=config.moe_intermediate_size,
                topk_norm=1.0 if config.norm_topk_prob else None,
                shared_intermediate_size=config.shared_expert_intermediate_size, shared_gate=True,
                dense_layers=frozenset(i for i in range(config.num_hidden_layers)
                                       if i in dense_only or (i + 1) % step != 0))
        return llama_like_args(config, max_positions, qkv_bias=getattr(config, "qkv_bias", True),
                               o_bias=False, sliding_window=config.sliding_window or None, moe=moe)


class FullWidthQKNormAttention(SelfAttention):
    """q and k RMS-normalised over the whole projection (all heads at once, one weight
    per feature), before `clip_qkv` and rotary."""

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__(args, layer_idx)
        self.q_norm = RMSNorm(self.q_size, args.norm_eps)
        self.k_norm = RMSNorm(self.kv_size, args.norm_eps)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project_qkv(x)
        return self.q_norm(q), self.k_norm(k), v


class FullWidthQKNormDecoderLayer(DecoderLayer):
    attn_cls = FullWidthQKNormAttention


@register("OlmoeForCausalLM", "OLMoEForCausalLM")
class OlmoeForCausalLM(CausalLM):
    """OLMo's MoE: q/k norm over the whole projection, optional q/k/v clipping."""

    weight_map = WeightMap(renames=STACKED_EXPERT_RENAMES, indexed_shards=PER_EXPERT_SHARDS)
    layer_cls = FullWidthQKNormDecoderLayer

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        moe = MoEArgs(num_experts=config.num_experts, top_k=config.num_experts_per_tok,
                      intermediate_size=config.intermediate_size,
                      topk_norm=1.0 if config.norm_topk_prob else None)
        return llama_like_args(config, max_positions, moe=moe, clip_qkv=config.clip_qkv)


@register("GraniteMoeForCausalLM")
class GraniteMoeForCausalLM(CausalLM):
    """Mixtral with Granite's embedding, attention, residual and logit multipliers; the
    experts are stored stacked (`input_linear` = gate and up, `output_linear` = down)."""

    weight_map = WeightMap(renames=(
        (r"\.block_sparse_moe\.router\.(layer\.)?weight$", ".mlp.gate.weight"),
        (r"\.block_sparse_moe\.input_linear\.weight$", ".mlp.experts.gate_up_proj.weight"),
        (r"\.block_sparse_moe\.output_linear\.weight$", ".mlp.experts.down_proj.weight"),
        _BLOCK_SPARSE_MOE, *STACKED_EXPERT_RENAMES,
    ))

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        # Its router takes the softmax of the top-k logits: the renormalised top-k probabilities.
        moe = MoEArgs(num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                      intermediate_size=config.intermediate_size)
        return llama_like_args(config, max_positions, moe=moe, embed_scale=config.embedding_multiplier,
                               attn_scale=config.attention_multiplier,
                               residual_scale=config.residual_multiplier,
                               logit_scale=1.0 / config.logits_scaling)


@register("PhimoeForCausalLM", "PhiMoEForCausalLM")
class PhimoeForCausalLM(CausalLM):
    """Mixtral with sparsemixer routing, LayerNorm, biased attention and LM head, and
    longrope with PhiMoE's own short/long cos-sin scales (see `RotaryEmbedding`)."""

    weight_map = WeightMap(renames=(_BLOCK_SPARSE_MOE, (r"\.mlp\.router\.weight$", ".mlp.gate.weight"),
                                    *STACKED_EXPERT_RENAMES),
                           indexed_shards=PER_EXPERT_SHARDS)

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        moe = MoEArgs(num_experts=config.num_local_experts, top_k=config.num_experts_per_tok,
                      intermediate_size=config.intermediate_size, routing="sparsemixer",
                      jitter_eps=config.router_jitter_noise)
        return llama_like_args(config, max_positions, norm="layer", moe=moe,
                               lm_head_bias=config.lm_head_bias)
