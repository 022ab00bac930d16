"""DBRX: a mixture-of-experts decoder with bias-free LayerNorm, a fused and clipped
Wqkv projection, and expert weights packed one tensor per projection."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator

import torch

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap
from intarsia.backbones.moe import PER_EXPERT_SHARDS, MoEArgs
from intarsia.backbones.rotary import RotaryEmbedding
from intarsia.engine.registry import register

# The packed expert projections and the per-expert names they unpack to (Mixtral's).
_PACKED_EXPERTS = re.compile(r"(.*\.ffn\.experts)\.mlp\.(w1|v1|w2)")
_UNPACKED_NAMES = {"w1": "w1", "v1": "w3", "w2": "w2"}


@register("DbrxForCausalLM")
class DbrxForCausalLM(CausalLM):
    weight_map = WeightMap(
        renames=(
            (r"^transformer\.wte\.", "model.embed_tokens."),
            (r"^transformer\.norm_f\.", "model.norm."),
            (r"^transformer\.blocks\.", "model.layers."),
            (r"\.norm_attn_norm\.norm_1\.", ".input_layernorm."),
            (r"\.norm_attn_norm\.norm_2\.", ".post_attention_layernorm."),
            (r"\.norm_attn_norm\.attn\.Wqkv\.", ".self_attn.qkv_proj."),
            (r"\.norm_attn_norm\.attn\.out_proj\.", ".self_attn.o_proj."),
            (r"\.ffn\.router\.layer\.", ".mlp.gate."),
            (r"\.ffn\.experts\.", ".mlp.experts."),
        ),
        indexed_shards=PER_EXPERT_SHARDS,
    )

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        attn, ffn = config.attn_config, config.ffn_config
        head_dim = config.d_model // config.n_heads
        # DBRX was trained with attn_config.rope_theta, which transformers 5 no longer reads.
        theta = getattr(attn, "rope_theta", None)
        if theta is not None and theta != config.rope_parameters.get("rope_theta"):
            config = copy.copy(config)
            config.rope_parameters = {**config.rope_parameters, "rope_theta": theta}
        moe = MoEArgs(num_experts=ffn.moe_num_experts, top_k=ffn.moe_top_k,
                      intermediate_size=ffn.ffn_hidden_size, topk_norm=ffn.moe_normalize_expert_weights)
        # norm_eps: DBRX's LayerNorms keep torch's default epsilon.
        return DecoderArgs(
            vocab_size=config.vocab_size, hidden_size=config.d_model, num_layers=config.n_layers,
            num_heads=config.n_heads, num_kv_heads=attn.kv_n_heads, head_dim=head_dim,
            intermediate_size=ffn.ffn_hidden_size, norm="layer", norm_bias=False, norm_eps=1e-5,
            act=(ffn.ffn_act_fn or {}).get("name", "silu"), clip_qkv=attn.clip_qkv,
            rope=RotaryEmbedding.from_config(config, head_dim, max_positions), moe=moe)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().load_weights(self._unpack_experts(weights))

    def _unpack_experts(self, weights: Iterable[tuple[str, torch.Tensor]]
                        ) -> Iterator[tuple[str, torch.Tensor]]:
        """Each packed projection is [experts * inter, hidden], experts one after another
        (w1 = gate, v1 = up, w2 = down transposed): yield them as per-expert matrices."""
        num_experts = self.args.moe.num_experts
        for name, tensor in weights:
            match = _PACKED_EXPERTS.fullmatch(name)
            if match is None:
                yield name, tensor
                continue
            prefix, packed = match.groups()
            for expert, matrix in enumerate(tensor.view(num_experts, -1, tensor.shape[-1])):
                yield (f"{prefix}.{expert}.{_UNPACKED_NAMES[packed]}.weight",
                       matrix.t() if packed == "w2" else matrix)
