"""CLIP and SigLIP vision towers (one class: they differ in a class token, a
pre-norm and the patch embedding's bias), with transformers' parameter names."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig

from intarsia.backbones.layers import LayerNorm
from intarsia.encoders.transformer import EncoderLayer


class VisionEmbeddings(nn.Module):
    def __init__(self, config: PretrainedConfig, class_token: bool) -> None:
        super().__init__()
        dim, patch = config.hidden_size, config.patch_size
        self.patch_embedding = nn.Conv2d(config.num_channels, dim, patch, patch, bias=not class_token)
        self.class_embedding = nn.Parameter(torch.empty(dim)) if class_token else None
        num_positions = (config.image_size // patch) ** 2 + int(class_token)
        self.position_embedding = nn.Embedding(num_positions, dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[images, channels, H, W] -> [images, tokens, dim]"""
        weight = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)
        if self.class_embedding is not None:
            x = torch.cat((self.class_embedding.expand(x.shape[0], 1, -1), x), dim=1)
        return x + self.position_embedding.weight[None]


class VisionEncoder(nn.Module):
    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                         config.hidden_act, config.layer_norm_eps)
            for _ in range(config.num_hidden_layers))


class VisionTransformer(nn.Module):
    """CLIP (`clip_vision_model`: class token, pre-norm) or SigLIP (`siglip_vision_model`)."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        is_clip = config.model_type == "clip_vision_model"
        self.num_layers = config.num_hidden_layers
        self.embeddings = VisionEmbeddings(config, class_token=is_clip)
        eps = config.layer_norm_eps
        self.pre_layrnorm = LayerNorm(config.hidden_size, eps) if is_clip else None
        self.encoder = VisionEncoder(config)
        self.post_layernorm = LayerNorm(config.hidden_size, eps)

    def forward(self, pixel_values: torch.Tensor,
                feature_layers: int | list[int] | None = None) -> torch.Tensor:
        """[images, C, H, W] -> [images, tokens, dim]: the post-normed last layer, or the
        hidden states after `feature_layers` (transformers' `hidden_states[i]` indexing,
        negative from the end; several are concatenated on the feature axis)."""
        x = self.embeddings(pixel_values)
        if self.pre_layrnorm is not None:
            x = self.pre_layrnorm(x)
        images, tokens, dim = x.shape
        lengths = [tokens] * images
        x = x.reshape(images * tokens, dim)
        if feature_layers is None:
            for layer in self.encoder.layers:
                x = layer(x, lengths)
            return self.post_layernorm(x).view(images, tokens, dim)
        wanted = [feature_layers] if isinstance(feature_layers, int) else list(feature_layers)
        wanted = [i % (self.num_layers + 1) for i in wanted]  # hidden_states has layers + 1 entries
        states = {0: x} if 0 in wanted else {}
        for i, layer in enumerate(self.encoder.layers[:max(wanted)], start=1):
            x = layer(x, lengths)
            if i in wanted:
                states[i] = x
        return torch.cat([states[i] for i in wanted], dim=-1).view(images, tokens, -1)
