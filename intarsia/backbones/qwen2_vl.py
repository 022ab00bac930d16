"""Qwen2-VL: images and videos at native resolution through Qwen2-VL's vision
transformer, inlaid into a Qwen2 decoder with multimodal rotary positions."""

from __future__ import annotations

import torch
from transformers import PretrainedConfig

from intarsia.backbones.decoder import WeightMap, head_dim_of, llama_like_args
from intarsia.backbones.llama import Qwen2ForCausalLM
from intarsia.backbones.mrope import MRotaryEmbedding
from intarsia.backbones.multimodal import LANGUAGE_MODEL_RENAMES, MultiModalCausalLM
from intarsia.encoders.qwen2_vl import QWEN2_VL_VISION_RENAMES, Qwen2VisionTransformer
from intarsia.engine.registry import register
from intarsia.processors.multimodal import MultiModalInputs, MultiModalItem, MultiModalProcessor

GRID_KEYS = {"image": "image_grid_thw", "video": "video_grid_thw"}
PIXEL_KEYS = {"image": "pixel_values", "video": "pixel_values_videos"}


class Qwen2VLTextLM(Qwen2ForCausalLM):
    """Qwen2 whose rotary embedding takes (temporal, height, width) positions."""

    @staticmethod
    def adapt(config, max_positions: int):
        rope = MRotaryEmbedding.from_config(config, head_dim_of(config), max_positions)
        return llama_like_args(config, max_positions, qkv_bias=True, o_bias=False, rope=rope)


def mrope_positions(token_ids: list[int], items: list[MultiModalItem],
                    merge: int) -> tuple[torch.Tensor, int]:
    """Positions [3, len(token_ids)] and the offset of later (generated) positions.

    Text tokens count up by one in all three rows; an image / video item's tokens
    take (t, h, w) grid coordinates shifted to where the item starts, and the text
    after it continues past the item's largest coordinate.
    """
    parts, cursor, next_pos = [], 0, 0
    for item in items:
        text = item.offset - cursor
        parts.append(torch.arange(text).expand(3, -1) + next_pos)
        next_pos += text
        t, h, w = (int(v) for v in item.data[GRID_KEYS[item.modality]].view(-1))
        h, w = h // merge, w // merge
        grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w),
                                          indexing="ij")).view(3, -1)
        parts.append(grid + next_pos)
        next_pos += max(t, h, w)
        cursor = item.end
    parts.append(torch.arange(len(token_ids) - cursor).expand(3, -1) + next_pos)
    positions = torch.cat(parts, dim=1)
    return positions, int(positions.max()) + 1 - len(token_ids)


class Qwen2VLProcessor(MultiModalProcessor):
    modalities = ("image", "video")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.merge = self.hf_config.vision_config.spatial_merge_size

    def placeholder_prompt(self, modality: str) -> str:
        return f"<|vision_start|>{self.placeholder_tokens[modality]}<|vision_end|>"

    def check_embeddings(self, modality: str, data: dict[str, torch.Tensor], num_tokens: int) -> None:
        key = GRID_KEYS[modality]
        grid = data.get(key)
        if grid is None or grid.numel() != 3:
            raise ValueError(f"precomputed {modality} embeddings need {key!r} (one [t, h, w] row)")
        data[key] = grid = grid.view(1, 3).long()
        expected = int(grid.prod()) // self.merge ** 2
        if expected != num_tokens:
            raise ValueError(f"{modality}_embeds has {num_tokens} rows but {key} "
                             f"{grid.tolist()[0]} gives {expected} tokens")

    def finalize(self, token_ids: list[int], items: list[MultiModalItem]) -> MultiModalInputs:
        positions, delta = mrope_positions(token_ids, items, self.merge)
        return MultiModalInputs(items, positions, delta)


QWEN2_VL_WEIGHT_MAP = WeightMap(renames=(
    *LANGUAGE_MODEL_RENAMES,
    (r"^model\.visual\.", "visual."),
    (r"^model\.", "language_model.model."),  # the classic layout: text decoder under model.*
    *QWEN2_VL_VISION_RENAMES,
))


@register("Qwen2VLForConditionalGeneration", processor=Qwen2VLProcessor)
class Qwen2VLForConditionalGeneration(MultiModalCausalLM):
    weight_map = QWEN2_VL_WEIGHT_MAP
    text_cls = Qwen2VLTextLM
    uses_mrope = True

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.visual = Qwen2VisionTransformer(config.vision_config)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        grid = torch.cat([item.data[GRID_KEYS[modality]] for item in items])  # read on the host
        merged = self.visual(self.item_tensor(items, PIXEL_KEYS[modality]), grid)
        return list(merged.split([item.length for item in items]))
