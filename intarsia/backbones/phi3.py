"""Microsoft Phi-3 / Phi-3.5 / Phi-4-mini: Llama blocks whose checkpoints already store
q/k/v and gate/up fused (`qkv_proj`, `gate_up_proj`, exactly our fused layout), with
longrope scaling, optional partial rotary and a sliding window on every layer."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, llama_like_args
from intarsia.engine.registry import register


@register("Phi3ForCausalLM")
class Phi3ForCausalLM(CausalLM):
    adapt = staticmethod(llama_like_args)
