"""NVIDIA Nemotron(-3/4): layernorm1p (LayerNorm scaled by ``1 + w``), a non-gated
squared-ReLU MLP and rotary on part of each head."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, llama_like_args
from intarsia.engine.registry import register


def nemotron_args(config, max_positions: int) -> DecoderArgs:
    return llama_like_args(config, max_positions, norm="layer", norm_offset=1.0, gated_mlp=False)


@register("NemotronForCausalLM")
class NemotronForCausalLM(CausalLM):
    adapt = staticmethod(nemotron_args)
