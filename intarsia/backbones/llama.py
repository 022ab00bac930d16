"""Llama and its close relatives: the same blocks, different config fields."""

from __future__ import annotations

from intarsia.backbones.decoder import CausalLM, llama_like_args
from intarsia.engine.registry import register


@register("LlamaForCausalLM", "LLaMAForCausalLM")
class LlamaForCausalLM(CausalLM):
    """Llama 1/2/3 (incl. llama3 / linear / dynamic rope scaling), GQA."""

    adapt = staticmethod(llama_like_args)


@register("MistralForCausalLM")
class MistralForCausalLM(CausalLM):
    """Llama with a sliding attention window on every layer."""

    adapt = staticmethod(llama_like_args)


@register("Qwen2ForCausalLM")
class Qwen2ForCausalLM(CausalLM):
    """Llama with biased q/k/v projections and optional sliding windows on upper layers."""

    @staticmethod
    def adapt(config, max_positions: int):
        return llama_like_args(config, max_positions, qkv_bias=True, o_bias=False)
