"""BigCode StarCoder2: biased LayerNorms and linears, a plain GELU MLP (`c_fc`/`c_proj`
in the checkpoint), GQA and a sliding window."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, DecoderArgs, WeightMap, llama_like_args
from intarsia.engine.registry import register


def starcoder2_args(config, max_positions: int) -> DecoderArgs:
    bias = config.use_bias
    return llama_like_args(config, max_positions, norm="layer", gated_mlp=False,
                           qkv_bias=bias, o_bias=bias, mlp_bias=bias)


@register("Starcoder2ForCausalLM")
class Starcoder2ForCausalLM(CausalLM):
    adapt = staticmethod(starcoder2_args)
    weight_map = WeightMap(renames=((r"\.mlp\.c_fc\.", ".mlp.up_proj."),
                                    (r"\.mlp\.c_proj\.", ".mlp.down_proj.")))
