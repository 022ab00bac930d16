"""The shape of every multimodal generation model: a text `CausalLM` from this
package plus encoders whose outputs the model runner inlays at placeholder rows.

An architecture declares its encoder/projector modules, `encode()`, and how the
checkpoint's tensor names map onto them; the decoder is the shared text family.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.decoder import CausalLM, WeightMap, load_named_weights
from intarsia.engine.registry import registry
from intarsia.processors.multimodal import MultiModalItem
from intarsia.transfer import device_cat

# Checkpoint layouts of the language model inside a multimodal checkpoint: the
# classic `language_model.model.*` / `language_model.lm_head.*` and transformers 5's
# in-memory `model.language_model.*` / `lm_head.*`, both mapped onto ours.
LANGUAGE_MODEL_RENAMES = (
    (r"^model\.language_model\.", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
)


def text_backbone(text_config: PretrainedConfig, max_positions: int,
                  cls: type[CausalLM] | None = None) -> CausalLM:
    """The registered text family of `text_config` (by its model_type), or `cls`."""
    if cls is None:
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(text_config.model_type)
        entry = registry().get(arch) if arch else None
        if entry is None:
            raise ValueError(f"no intarsia text backbone for language model type "
                             f"{text_config.model_type!r}")
        cls = entry.cls
    return cls(text_config, max_positions)


class MultiModalCausalLM(nn.Module):
    weight_map = WeightMap()
    text_cls: type[CausalLM] | None = None  # None: the family registered for the text config
    uses_mrope = False  # positions are [3, tokens] (see intarsia.backbones.mrope)

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.language_model = lm = text_backbone(config.get_text_config(), max_positions, self.text_cls)
        self.args = lm.args
        # The outer config decides tying when it says (as transformers does for the top model).
        tie = getattr(config, "tie_word_embeddings", None)
        if tie is not None and tie != self.args.tie_word_embeddings:
            self.args.tie_word_embeddings = tie
            lm.lm_head.weight = lm.model.embed_tokens.weight if tie else nn.Parameter(
                torch.empty_like(lm.lm_head.weight), requires_grad=False)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        """Encoder outputs of `items` (all of `modality`), each [item.length, hidden]."""
        raise NotImplementedError

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.embed(input_ids)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return self.language_model(positions, inputs_embeds, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.args.tie_word_embeddings:  # some checkpoints store the tied copy too
            weights = ((n, w) for n, w in weights if not n.endswith("lm_head.weight"))
        load_named_weights(self, weights, self.weight_map)

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    def item_tensor(self, items: list[MultiModalItem], key: str, floating: bool = True) -> torch.Tensor:
        """`key` of every item's processor output, concatenated on the device."""
        return device_cat([item.data[key] for item in items], self.device,
                          self.dtype if floating else None)
