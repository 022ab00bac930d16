"""Gemma and Gemma 2: Llama with ``(1 + w)`` RMSNorm, a sqrt(hidden)-scaled embedding and a
tanh-GELU gated MLP; Gemma 2 adds soft-capping, alternating sliding windows and a norm
after attention and after the MLP as well.

The backbone pieces (`gemma2_args`, `Gemma2DecoderLayer`) are public so that the
embedding model `Gemma2Model` is the same stack without the LM head.
"""

from __future__ import annotations

import torch

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import (
    CausalLM,
    DecoderArgs,
    DecoderLayer,
    llama_like_args,
    make_norm,
    norm_residual,
)
from intarsia.engine.registry import register


def gemma_args(config, max_positions: int, **overrides) -> DecoderArgs:
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("Gemma with use_bidirectional_attention (an encoder-style embedder) is not "
                         "supported: intarsia's decoder attention is causal")
    act = getattr(config, "hidden_activation", None) or config.hidden_act
    # Gemma's legacy "gelu" means the tanh approximation (as transformers reads it too).
    act = "gelu_pytorch_tanh" if act == "gelu" else act
    # transformers rounds the embedding normaliser to the model dtype before scaling.
    embed_scale = torch.tensor(config.hidden_size**0.5, dtype=torch.get_default_dtype()).item()
    return llama_like_args(config, max_positions, norm_offset=1.0, act=act, embed_scale=embed_scale,
                           **overrides)


def gemma2_args(config, max_positions: int) -> DecoderArgs:
    return gemma_args(config, max_positions,
                      attn_softcap=config.attn_logit_softcapping,
                      final_logit_softcap=config.final_logit_softcapping,
                      attn_scale=config.query_pre_attn_scalar**-0.5)


class Gemma2DecoderLayer(DecoderLayer):
    """Normalises the attention and MLP outputs too before each residual add."""

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__(args, layer_idx)
        self.pre_feedforward_layernorm = make_norm(args)
        self.post_feedforward_layernorm = make_norm(args)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = norm_residual(self.input_layernorm, x, residual)
        x = self.post_attention_layernorm(self.self_attn(positions, x, ctx))
        x, residual = self.pre_feedforward_layernorm(x, residual)
        return self.post_feedforward_layernorm(self.mlp(x)), residual


@register("GemmaForCausalLM")
class GemmaForCausalLM(CausalLM):
    adapt = staticmethod(gemma_args)


@register("Gemma2ForCausalLM")
class Gemma2ForCausalLM(CausalLM):
    adapt = staticmethod(gemma2_args)
    layer_cls = Gemma2DecoderLayer
