"""Phi-3-vision / Phi-3.5-vision input processing (transformers has no class for it):
the published processor's HD transform, and prompts with `<|image_N|>` tags.

HD transform: an image is resized (keeping its aspect ratio) to the largest grid of
336-pixel crops that has at most `num_crops` cells, padded with white to whole
crops, normalised with CLIP's statistics, and cut into its crops; a bicubic 336x336
copy of the whole image (the "global" crop) goes first.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerBase

CROP = 336  # the CLIP ViT-L/14-336 input size every crop has
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")  # the prompt's reference to its N-th image


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize to `scale` crops wide (the largest scale whose grid fits in `num_crops`
    cells, computed on the wider side) and pad the height with white to a multiple
    of 336, centred, as the published `HD_transform` does."""
    transposed = image.width < image.height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    ratio = image.width / image.height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    width = (scale - 1) * CROP
    height = int(width / ratio)
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    padded = Image.new("RGB", (width, math.ceil(height / CROP) * CROP), (255, 255, 255))
    padded.paste(resized, (0, (padded.height - height) // 2))
    return padded.transpose(Image.Transpose.TRANSPOSE) if transposed else padded


def num_image_tokens(height: int, width: int) -> int:
    """Placeholder count of an HD-transformed image: 12x12 merged patches per crop
    (global one included), a newline per row of 12, one global/sub separator."""
    rows, cols = height // CROP, width // CROP
    return (rows * cols + 1) * 144 + 1 + (rows + 1) * 12


class Phi3VImageProcessor:
    """The published `Phi3VImageProcessor`, except that crops are not padded to
    `num_crops + 1`: `pixel_values` is [1 + crops, 3, 336, 336] per image."""

    def __init__(self, num_crops: int = 16, image_mean: tuple[float, ...] = CLIP_MEAN,
                 image_std: tuple[float, ...] = CLIP_STD) -> None:
        self.num_crops = num_crops
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)

    @classmethod
    def from_pretrained(cls, path: Path) -> Phi3VImageProcessor:
        file = Path(path) / "preprocessor_config.json"
        try:
            settings = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the Phi-3-vision image processor config {file}: {e}") from e
        return cls(**{k: settings[k] for k in ("num_crops", "image_mean", "image_std") if k in settings})

    def save_pretrained(self, path: Path) -> None:
        settings = {"image_processor_type": "Phi3VImageProcessor", "processor_class": "Phi3VProcessor",
                    "num_crops": self.num_crops, "image_mean": list(self.image_mean),
                    "image_std": list(self.image_std), "do_convert_rgb": True}
        (Path(path) / "preprocessor_config.json").write_text(json.dumps(settings, indent=2))

    def __call__(self, images: list[Image.Image], num_crops: int | None = None) -> dict[str, Any]:
        num_crops = num_crops or self.num_crops
        if not isinstance(num_crops, int) or num_crops < 1:
            raise ValueError(f"num_crops must be a positive integer, got {num_crops!r}")
        pixel_values, sizes = [], []
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        for image in images:
            hd = hd_transform(image.convert("RGB"), num_crops)
            pixels = (torch.from_numpy(np.array(hd)).permute(2, 0, 1).float() / 255 - mean) / std
            _, height, width = pixels.shape
            crops = (pixels.view(3, height // CROP, CROP, width // CROP, CROP)
                     .permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP))
            whole = F.interpolate(pixels[None], size=(CROP, CROP), mode="bicubic")
            pixel_values.append(torch.cat([whole, crops]))
            sizes.append((height, width))
        return {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes),
                "num_img_tokens": [num_image_tokens(h, w) for h, w in sizes]}


class Phi3VProcessor:
    """What intarsia's multimodal pipeline asks of an HF processor, for Phi-3-vision:
    each `<|image|>` of the text becomes its image's placeholder count, and chats
    render image parts as the `<|image_N|>` tags of Phi-3-vision's prompt format."""

    image_token = "<|image|>"

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer: PreTrainedTokenizerBase) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.chat_template = tokenizer.chat_template
        if tokenizer.convert_tokens_to_ids(self.image_token) in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {self.image_token} token for image placeholders")

    def __call__(self, text: str, images: list[Image.Image] | None = None, return_tensors: str = "pt",
                 **kwargs: Any) -> BatchFeature:
        inputs = self.image_processor(images, **kwargs) if images else {}
        counts = iter(inputs.get("num_img_tokens", []))
        # Each placeholder becomes as many as its image has tokens (the text is scanned once).
        text = re.sub(re.escape(self.image_token), lambda _: self.image_token * next(counts), text)
        ids = self.tokenizer(text, return_tensors=return_tensors).input_ids
        pixel_values = inputs.get("pixel_values")
        data = {"input_ids": ids, **({"pixel_values": torch.cat(pixel_values),
                                      "image_sizes": inputs["image_sizes"]} if pixel_values else {})}
        return BatchFeature(data)

    def apply_chat_template(self, conversation: list[dict], chat_template: str | None = None,
                            **kwargs: Any) -> str:
        number = 0
        flat = []
        for message in conversation:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part.get("type") == "image":
                        number += 1
                        parts.append(f"<|image_{number}|>\n")
                    else:
                        parts.append(part["text"])
                content = "".join(parts)
            flat.append({**message, "content": content})
        return self.tokenizer.apply_chat_template(flat, chat_template=chat_template, **kwargs)
