"""Phi-3-vision / Phi-3.5-vision (`Phi3VForCausalLM`): a CLIP ViT-L/14-336 tower over
HD-transformed crops, 2x2 patch merging with learnable row/global separators, an
MLP projector and the Phi-3 decoder. Also an embedder (VLM2Vec) with task="embed".

transformers has neither the config nor the model, so both are declared here from
the published code (`image_embedding_phi3_v.py`, `configuration_phi3_v.py`); the
checkpoint layout is the published one.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, CLIPVisionConfig, Phi3Config, PretrainedConfig

from intarsia.backbones.decoder import WeightMap
from intarsia.backbones.multimodal import MultiModalCausalLM
from intarsia.backbones.phi3 import Phi3ForCausalLM
from intarsia.encoders.projectors import MLPProjector
from intarsia.encoders.transformer import ENCODER_LAYER_RENAMES
from intarsia.encoders.vit import VisionTransformer
from intarsia.engine.registry import register
from intarsia.processors.multimodal import MultiModalItem, MultiModalProcessor
from intarsia.processors.phi3v import CROP, IMAGE_TAG, Phi3VImageProcessor, Phi3VProcessor

# The tower every Phi-3(.5)-vision checkpoint uses (its config.json does not spell it out).
CLIP_VIT_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, image_size=CROP, patch_size=14, projection_dim=768,
                      hidden_act="quick_gelu", layer_norm_eps=1e-5)


class Phi3VConfig(Phi3Config):
    """`phi3_v`: Phi-3 plus `img_processor` (image_dim_out, layer_idx, type_feature) and
    `embd_layer` (HD transform settings). An `img_processor["vision_config"]` dict,
    which published checkpoints do not have, overrides the CLIP tower's shape."""

    model_type = "phi3_v"


AutoConfig.register("phi3_v", Phi3VConfig)


class Phi3VPromptProcessor(MultiModalProcessor):
    """`<|image_N|>` tags name the N-th image of the prompt (a tag may repeat)."""

    modalities = ("image",)

    def __init__(self, tokenizer, model_path, hf_config: PretrainedConfig,
                 limits: dict[str, int] | None = None, media_dtype: torch.dtype | None = None) -> None:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_path)
        processor = Phi3VProcessor(Phi3VImageProcessor.from_pretrained(model_path), tokenizer)
        super().__init__(tokenizer, model_path, hf_config, limits, hf_processor=processor,
                         media_dtype=media_dtype)

    def placeholder_prompt(self, modality: str) -> str:
        return self.placeholder_tokens[modality] + "\n"

    def process(self, prompt: dict, mm_data: dict):
        text = prompt.get("prompt")
        if isinstance(text, str) and IMAGE_TAG.search(text):
            images = mm_data.get("image")
            images = images if isinstance(images, list) else [] if images is None else [images]
            numbers = [int(n) for n in IMAGE_TAG.findall(text)]
            if set(numbers) != set(range(1, len(images) + 1)):
                raise ValueError(f"the prompt's image tags <|image_N|> name images {sorted(set(numbers))} "
                                 f"but {len(images)} images were given (tags count from 1)")
            mm_data = {**mm_data, "image": [images[n - 1] for n in numbers]}
            prompt = {**prompt, "prompt": IMAGE_TAG.sub(self.placeholder_tokens["image"], text)}
        return super().process(prompt, mm_data)


class Phi3HDImageEmbedding(nn.Module):
    """CLIP features of every crop, each crop's 24x24 patches merged 2x2 into 12x12
    tokens of 4x the width, laid out as the image's grid with `sub_GN` ending each
    row; then `glb_GN` and the global crop the same way; then the projector."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        settings = config.img_processor
        vision = CLIPVisionConfig(**{**CLIP_VIT_L_336, **settings.get("vision_config", {})})
        self.feature_layer = settings.get("layer_idx", -2)
        if settings.get("type_feature", "patch") != "patch":
            raise ValueError(f"Phi-3-vision type_feature {settings['type_feature']!r} is not supported")
        embd = config.embd_layer
        if embd.get("hd_transform_order", "sub_glb") != "sub_glb" or not embd.get("use_hd_transform"):
            raise ValueError(f"Phi-3-vision embd_layer {embd} is not supported; the published "
                             "checkpoints use the HD transform with order sub_glb")
        self.img_processor = VisionTransformer(vision)
        width = 4 * settings["image_dim_out"]
        self.glb_GN = nn.Parameter(torch.empty(1, 1, width), requires_grad=False)
        self.sub_GN = nn.Parameter(torch.empty(1, 1, 1, width), requires_grad=False)
        self.img_projection = MLPProjector(width, config.hidden_size, "gelu")

    def forward(self, pixel_values: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """pixel_values: every image's [global, crops...] stacked; one output per image."""
        patches = self.img_processor(pixel_values, self.feature_layer)[:, 1:]  # drop the class token
        outputs, first = [], 0
        for height, width in image_sizes:
            rows, cols = height // CROP, width // CROP
            crops = patches[first:first + 1 + rows * cols]
            first += 1 + rows * cols
            sub_image, whole = self._grid(crops[1:], rows, cols), self._grid(crops[:1], 1, 1)
            outputs.append(self.img_projection(torch.cat([sub_image, self.glb_GN[0], whole])))
        return outputs

    def _grid(self, crops: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """[rows * cols, 24 * 24, C] -> [rows * 12 * (cols * 12 + 1), 4C], row-major over the image."""
        side = math.isqrt(crops.shape[1])
        half, channels = side // 2, crops.shape[2]
        merged = (crops.view(rows, cols, half, 2, half, 2, channels)
                  .permute(0, 2, 1, 4, 3, 5, 6)  # rows, 12, cols, 12, 2, 2, C
                  .reshape(rows * half, cols * half, 4 * channels))
        newline = self.sub_GN[0].expand(rows * half, 1, -1)
        return torch.cat([merged, newline], dim=1).reshape(-1, 4 * channels)


@register("Phi3VForCausalLM", processor=Phi3VPromptProcessor)
class Phi3VForCausalLM(MultiModalCausalLM):
    text_cls = Phi3ForCausalLM
    weight_map = WeightMap(renames=(
        (r"^model\.vision_embed_tokens\.", "vision_embed_tokens."),
        (r"^model\.", "language_model.model."),
        (r"^lm_head\.", "language_model.lm_head."),
        (r"\.img_processor\.vision_model\.", ".img_processor."),
        (r"\.img_projection\.0\.", ".img_projection.linear_1."),
        (r"\.img_projection\.2\.", ".img_projection.linear_2."),
        *ENCODER_LAYER_RENAMES,
    ))

    def __init__(self, config: PretrainedConfig, max_positions: int) -> None:
        super().__init__(config, max_positions)
        self.vision_embed_tokens = Phi3HDImageEmbedding(config)

    def encode(self, modality: str, items: list[MultiModalItem]) -> list[torch.Tensor]:
        sizes = [tuple(item.data["image_sizes"].view(2).tolist()) for item in items]
        return self.vision_embed_tokens(self.item_tensor(items, "pixel_values"), sizes)
