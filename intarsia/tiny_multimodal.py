"""Tiny random-weight multimodal checkpoints built on the spot (tests, demo, examples).

Each is a real transformers config of its architecture at toy size, the
architecture's real HF processor (image processor with small sizes, a BPE
tokenizer carrying the model's special tokens, a chat template), and random
weights saved with safetensors. Their outputs are meaningless: they prove that
intarsia computes what transformers computes. Real checkpoints to use instead:
llava-hf/llava-1.5-7b-hf, Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForImageTextToText

from intarsia.tiny_models import save_tiny_model, train_tokenizer

TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=0, eos_token_id=1, pad_token_id=2)


def chat_template(placeholders: dict[str, str]) -> str:
    """A chat template rendering content parts, with `placeholders[modality]` per item."""
    parts = "".join(f"{{% elif part['type'] == '{m}' %}}{text}" for m, text in placeholders.items())
    return (
        "{% for message in messages %}<|{{ message['role'] }}|>"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
        + parts + "{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def save_tiny_llava(path: str | Path, seed: int = 0, image_size: int = 28, patch_size: int = 7) -> Path:
    """LLaVA-1.5 shape: CLIP tower (class token dropped, features of layer -2), MLP
    projector, Llama decoder; `(image_size / patch_size)^2` tokens per image."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    tokenizer = train_tokenizer(special_tokens=["<image>"])
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=image_size,
                                       patch_size=patch_size, projection_dim=32),
        text_config=LlamaConfig(**TEXT), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default")
    size = {"height": image_size, "width": image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template({"image": "<image>"}))
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


def qwen2_vl_parts(min_pixels: int = 28 * 28 * 2, max_pixels: int = 28 * 28 * 12,
                   text: dict | None = None, vision: dict | None = None):
    """(config, HF processor) of a Qwen2-VL model: toy sizes by default; `text` and
    `vision` override config fields (e.g. Qwen2-VL-7B's shape for benchmarks)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = train_tokenizer(special_tokens=specials)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    text = {**TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 3, 3]}, **(text or {})}
    vision = {"depth": 2, "embed_dim": 32, "hidden_size": text["hidden_size"], "num_heads": 4,
              "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              **(vision or {})}
    config = Qwen2VLConfig(
        vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], bos_token_id=0, eos_token_id=1)
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    pixels = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tokenizer,
        chat_template=chat_template({"image": "<|vision_start|><|image_pad|><|vision_end|>",
                                     "video": "<|vision_start|><|video_pad|><|vision_end|>"}))
    return config, processor


def save_tiny_qwen2_vl(path: str | Path, seed: int = 0, min_pixels: int = 28 * 28 * 2,
                       max_pixels: int = 28 * 28 * 12) -> Path:
    """Qwen2-VL shape: native-resolution ViT (patch 14, 2x2 merge) with images of 2 to
    12 tokens by default, videos, and a Qwen2 decoder with M-RoPE."""
    config, processor = qwen2_vl_parts(min_pixels, max_pixels)
    path = save_tiny_model(config, path, seed, processor.tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


DEMO_VLM_DIR = Path(".cache/intarsia-demo-qwen2-vl")


def build_demo_vlm(path: str | Path = DEMO_VLM_DIR) -> Path:
    """The demo's tiny Qwen2-VL (RANDOM weights; images and videos), built once."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_tiny_qwen2_vl(path, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    return path


def save_tiny_llava_next(path: str | Path, seed: int = 0, tile: int = 28, patch_size: int = 7) -> Path:
    """LLaVA-NeXT shape: CLIP tiles of `tile` pixels on a 1x2 / 2x1 / 2x2 grid plus the
    base view, Llama decoder."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    tokenizer = train_tokenizer(special_tokens=["<image>"])
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=tile, patch_size=patch_size,
                                       projection_dim=32),
        text_config=LlamaConfig(**TEXT), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
        vision_feature_select_strategy="default")
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": tile},
                                                crop_size={"height": tile, "width": tile},
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template({"image": "<image>"}))
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_llava_next_video(path: str | Path, seed: int = 0, tile: int = 28, patch_size: int = 7,
                               spatial_pool_mode: str = "average") -> Path:
    """LLaVA-NeXT-Video shape: LLaVA-NeXT's CLIP tiles for images; video frames of one
    base view each, their patch maps pooled 2x2 before the projector; Llama decoder."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
    )

    tokenizer = train_tokenizer(special_tokens=["<image>", "<video>"])
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    config = LlavaNextVideoConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=tile, patch_size=patch_size,
                                       projection_dim=32),
        text_config=LlamaConfig(**TEXT), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        spatial_pool_mode=spatial_pool_mode, spatial_pool_stride=2)
    crop = {"height": tile, "width": tile}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size={"shortest_edge": tile}, crop_size=crop),
        image_processor=LlavaNextImageProcessor(size={"shortest_edge": tile}, crop_size=crop,
                                                image_grid_pinpoints=pinpoints),
        tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=chat_template({"image": "<image>", "video": "<video>"}))
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_llava_onevision(path: str | Path, seed: int = 0, tile: int = 28, patch_size: int = 7,
                              vision_aspect_ratio: str = "anyres_max_2") -> Path:
    """LLaVA-OneVision shape: SigLIP tiles on a 1x2 / 2x1 / 2x2 grid, the 2x2 grid scaled
    down to `anyres_max_2` base views; video frames pooled bilinearly 2x2 after the
    projector, one image_newline closing each video; Qwen2 decoder."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = train_tokenizer(special_tokens=["<image>", "<video>"])
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=tile, patch_size=patch_size,
                                         vision_use_head=False),
        text_config=Qwen2Config(**TEXT), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"), image_grid_pinpoints=pinpoints,
        vision_aspect_ratio=vision_aspect_ratio)
    size = {"height": tile, "width": tile}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size), tokenizer=tokenizer,
        num_image_tokens=(tile // patch_size) ** 2, vision_feature_select_strategy="full",
        vision_aspect_ratio=vision_aspect_ratio,
        chat_template=chat_template({"image": "<image>", "video": "<video>"}))
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_paligemma(path: str | Path, seed: int = 0, image_size: int = 28, patch_size: int = 7,
                        gemma2: bool = False) -> Path:
    """PaliGemma shape: SigLIP tower, linear projector, Gemma decoder (PaliGemma 2: Gemma 2
    with a sliding window of 8 on its first layer), prefix-LM over the prompt;
    `(image_size / patch_size)^2` tokens per image."""
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tokenizer = train_tokenizer(special_tokens=["<image>"])
    text = {**TEXT, "head_dim": 16, "hidden_activation": "gelu_pytorch_tanh"}
    text_config = GemmaConfig(**text) if not gemma2 else Gemma2Config(
        **text, query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, layer_types=["sliding_attention", "full_attention"])
    config = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size,
                       "patch_size": patch_size, "vision_use_head": False},
        text_config=text_config.to_dict(), projection_dim=TEXT["hidden_size"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    num_tokens = (image_size // patch_size) ** 2
    processor = PaliGemmaProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size},
                                             image_seq_length=num_tokens),
        tokenizer=tokenizer)
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForImageTextToText)
    processor.save_pretrained(path)
    return Path(path)


def save_tiny_qwen2_audio(path: str | Path, seed: int = 0, window_s: int = 1) -> Path:
    """Qwen2-Audio shape: Whisper encoder over 16 mel bins, clips padded to `window_s`
    seconds (100 frames a second, 50 positions a second after the conv), pairs of
    frames pooled; Qwen2 decoder. A clip of s seconds gets about 25 * s tokens."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        Qwen2AudioConfig,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    specials = ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
    tokenizer = train_tokenizer(special_tokens=specials)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": 32, "encoder_layers": 2,
                      "encoder_attention_heads": 4, "encoder_ffn_dim": 64, "num_mel_bins": 16,
                      "max_source_positions": 50 * window_s},
        text_config=Qwen2Config(**TEXT).to_dict(),
        audio_token_id=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=16, chunk_length=window_s),
        tokenizer=tokenizer, chat_template=chat_template({"audio": "".join(specials)}))
    path = save_tiny_model(config, path, seed, tokenizer, model_cls=AutoModelForSeq2SeqLM)
    processor.save_pretrained(path)
    return Path(path)
