"""Pooling declarations: a generation family's decoder stack with a task head in place
of the LM head (text embedding, sequence classification and reward models).

The pooler (`intarsia.engine.pooler`) pools the decoder's hidden states and applies
the `score` head declared here; embedding models have no head.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from intarsia.backbones.gemma import Gemma2ForCausalLM
from intarsia.backbones.layers import Linear
from intarsia.backbones.llama import MistralForCausalLM, Qwen2ForCausalLM
from intarsia.engine.registry import register

# transformers' bare XxxModel checkpoints name the decoder's tensors without "model.".
_BARE_DECODER_NAMES = (r"^(embed_tokens|layers|norm)\.", r"model.\1.")


class PoolingModel:
    """Mixed in before a generation family: the family's decoder without its LM head,
    plus the `score` head of `build_head` (None for embedding models)."""

    has_lm_head = False
    default_pooling_type = "LAST"  # read by the pooler config (engine/pooler.py)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        family = cls.weight_map
        cls.weight_map = replace(family, renames=(_BARE_DECODER_NAMES, *family.renames),
                                 ignore=(*family.ignore, r"^lm_head\."))

    def __init__(self, config, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.score = self.build_head(config)

    @staticmethod
    def build_head(config) -> nn.Module | None:
        return None


@register("MistralModel", task="embed")
class MistralModel(PoolingModel, MistralForCausalLM):
    """Mistral as a text embedder (e5-mistral-7b-instruct: last token, L2-normalised)."""


@register("Gemma2Model", task="embed")
class Gemma2Model(PoolingModel, Gemma2ForCausalLM):
    """Gemma 2 as a text embedder (bge-multilingual-gemma2: last token, L2-normalised)."""


@register("Qwen2ForSequenceClassification", task="classify")
class Qwen2ForSequenceClassification(PoolingModel, Qwen2ForCausalLM):
    """Qwen2 with transformers' bias-free linear `score` over the last token."""

    @staticmethod
    def build_head(config) -> nn.Module:
        return Linear(config.hidden_size, config.num_labels)


@register("Qwen2ForRewardModel", task="reward")
class Qwen2ForRewardModel(PoolingModel, Qwen2ForCausalLM):
    """Qwen2.5-Math-RM: a Linear -> ReLU -> Linear scalar reward on every token (the
    published modeling_qwen2_rm.py layout: score.0 and score.2, both biased)."""

    default_pooling_type = "ALL"

    @staticmethod
    def build_head(config) -> nn.Module:
        hidden = config.hidden_size
        return nn.Sequential(Linear(hidden, hidden, bias=True), nn.ReLU(), Linear(hidden, 1, bias=True))
