"""Phi-3-vision (Phi3VForCausalLM) against an equivalent reference: transformers has
no class for it, so the test builds the published model from transformers' CLIP
tower and Phi-3 decoder plus the published HD image transform and projector,
saves it in the published checkpoint layout, and compares generation (greedy
tokens, top-5 logprobs) and VLM2Vec-style embeddings; tiny random weights, float32."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hf_reference import assert_outputs_match
from mm_reference import random_image
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3ForCausalLM

from intarsia import LLM, SamplingParams
from intarsia.backbones.phi3v import Phi3VConfig
from intarsia.processors.phi3v import CLIP_MEAN, CLIP_STD, Phi3VImageProcessor
from intarsia.tiny_models import randomize_weights, train_tokenizer

TEXT = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
            original_max_position_embeddings=2048, bos_token_id=0, eos_token_id=1, pad_token_id=2)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              image_size=336, patch_size=14, projection_dim=32, hidden_act="quick_gelu")
NUM_CROPS = 2


def published_preprocess(image: Image.Image, num_crops: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """`Phi3VImageProcessor.preprocess` of the published model (torchvision resize and
    pad, ToTensor + Normalize, bicubic global crop), without the padding crops."""
    width, height = image.size
    transposed = width < height
    if transposed:
        image = image.transpose(Image.TRANSPOSE)
        width, height = image.size
    ratio = width / height
    scale = 1
    while scale * np.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_w = int(scale * 336)
    new_h = int(new_w / ratio)
    image = TF.resize(image, [new_h, new_w])
    target = int(np.ceil(new_h / 336) * 336)
    top = int((target - new_h) / 2)
    image = TF.pad(image, [0, top, 0, target - new_h - top], fill=[255, 255, 255])
    if transposed:
        image = image.transpose(Image.TRANSPOSE)
    hd = TF.normalize(TF.to_tensor(image), CLIP_MEAN, CLIP_STD)
    h, w = hd.shape[1:]
    global_image = F.interpolate(hd[None].float(), size=(336, 336), mode="bicubic")
    crops = hd.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
    return torch.cat([global_image, crops]), (h, w)


class Phi3VReference(nn.Module):
    """The published Phi3VForCausalLM: `model.vision_embed_tokens` (CLIP up to layer -2,
    class token dropped, HD feature transform, projector) into a Phi-3 decoder."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        self.clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
        self.lm = Phi3ForCausalLM(config)
        width = 4 * VISION["hidden_size"]
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, width))
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, width))
        self.img_projection = nn.Sequential(nn.Linear(width, TEXT["hidden_size"]), nn.GELU(),
                                            nn.Linear(TEXT["hidden_size"], TEXT["hidden_size"]))

    def checkpoint(self) -> dict[str, torch.Tensor]:
        """Tensors under the published checkpoint's names."""
        tower = "model.vision_embed_tokens.img_processor"
        tensors = {f"{tower}.{k}": v for k, v in self.clip.state_dict().items()}
        tensors.update(self.lm.state_dict())
        tensors["model.vision_embed_tokens.glb_GN"] = self.glb_GN.data
        tensors["model.vision_embed_tokens.sub_GN"] = self.sub_GN.data
        tensors.update({f"model.vision_embed_tokens.img_projection.{k}": v
                        for k, v in self.img_projection.state_dict().items()})
        return {k: v.contiguous() for k, v in tensors.items()}

    def reshape_hd_patches_2x2merge(self, features: torch.Tensor, h_crop: int, w_crop: int) -> torch.Tensor:
        n, length, c = features.shape
        side = int(length**0.5)
        return (features.reshape(n, side, side, c).reshape(n, side // 2, 2, side // 2, 2, c)
                .permute(0, 1, 3, 2, 4, 5).reshape(n, -1, 4 * c)
                .reshape(n // (h_crop * w_crop), h_crop, w_crop, side // 2, side // 2, -1)
                .permute(0, 1, 3, 2, 4, 5).reshape(n // (h_crop * w_crop), h_crop * side // 2,
                                                   w_crop * side // 2, 4 * c))

    def add_image_newline(self, features: torch.Tensor) -> torch.Tensor:
        n, h, w, c = features.shape
        newline = self.sub_GN.expand(n, h, -1, -1)
        return torch.cat([features, newline], dim=2).reshape(n, -1, c)

    def image_features(self, pixel_values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        states = self.clip(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        h_crop, w_crop = size[0] // 336, size[1] // 336
        global_features = self.add_image_newline(self.reshape_hd_patches_2x2merge(states[:1], 1, 1))
        sub_features = self.add_image_newline(self.reshape_hd_patches_2x2merge(states[1:], h_crop, w_crop))
        return self.img_projection(torch.cat([sub_features[0], self.glb_GN[0], global_features[0]]))

    def input_embeds(self, ids: list[int], images: list[Image.Image], image_token_id: int) -> torch.Tensor:
        ids_tensor = torch.tensor(ids)
        embeds = self.lm.model.embed_tokens(ids_tensor)
        if images:
            features = [self.image_features(*published_preprocess(image, NUM_CROPS)) for image in images]
            embeds[ids_tensor == image_token_id] = torch.cat(features)
        return embeds

    def greedy(self, embeds: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
        tokens, rows = [], []
        for _ in range(steps):
            logits = self.lm(inputs_embeds=embeds[None]).logits[0, -1]
            rows.append(torch.log_softmax(logits, -1))
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, self.lm.model.embed_tokens(torch.tensor(tokens[-1:]))])
        return tokens, torch.stack(rows)


@pytest.fixture(scope="module")
def phi3v(tmp_path_factory):
    """(checkpoint folder, reference model, tokenizer)."""
    path = tmp_path_factory.mktemp("phi3v") / "model"
    tokenizer = train_tokenizer(special_tokens=["<|image|>"])
    config = Phi3VConfig(
        **TEXT, architectures=["Phi3VForCausalLM"],
        auto_map={"AutoConfig": "configuration_phi3_v.Phi3VConfig",
                  "AutoModelForCausalLM": "modeling_phi3_v.Phi3VForCausalLM"},
        img_processor={"image_dim_out": VISION["hidden_size"], "name": "clip_vision_model",
                       "model_name": "openai/clip-vit-large-patch14-336", "num_img_tokens": 144,
                       "vision_config": VISION},
        embd_layer={"embedding_cls": "image", "hd_transform_order": "sub_glb", "projection_cls": "mlp",
                    "use_hd_transform": True, "with_learnable_separator": True})
    torch.manual_seed(0)
    reference = randomize_weights(Phi3VReference(config)).eval()
    config.save_pretrained(path)
    save_file(reference.checkpoint(), path / "model.safetensors", metadata={"format": "pt"})
    tokenizer.save_pretrained(path)
    Phi3VImageProcessor(num_crops=NUM_CROPS).save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["model_type"] == "phi3_v"
    return path, reference, tokenizer


def reference_ids(tokenizer, prompt: str, images: list[Image.Image]) -> list[int]:
    """Token ids with each `<|image_N|>` tag expanded to its image's placeholder count."""
    for number, image in enumerate(images, start=1):
        _, (h, w) = published_preprocess(image, NUM_CROPS)
        count = (h // 336 * w // 336 + 1) * 144 + 1 + (h // 336 + 1) * 12
        prompt = prompt.replace(f"<|image_{number}|>", "<|image|>" * count)
    return tokenizer(prompt).input_ids


CASES = [  # square (1 crop), wide (1x2 crops) and tall (2x1 crops) images; text only
    ("<|user|>\n<|image_1|>\nWhat is in this picture?<|end|>\n<|assistant|>\n", [random_image(40, 40, 0)]),
    ("<|image_1|> and <|image_2|>: the quick brown fox", [random_image(60, 30, 1), random_image(30, 64, 2)]),
    ("Hello, how are you today? The sky is blue and the grass is green.", []),
]


def test_hd_transform_matches_published_processor():
    processor = Phi3VImageProcessor(num_crops=4)
    images = [random_image(40, 40, 0), random_image(90, 30, 1), random_image(30, 64, 2),
              random_image(700, 500, 3)]
    out = processor(images)
    for i, image in enumerate(images):
        pixels, size = published_preprocess(image, 4)
        assert tuple(out["image_sizes"][i].tolist()) == size
        torch.testing.assert_close(out["pixel_values"][i], pixels, atol=1e-5, rtol=0)


def test_phi3v_generation_matches_reference(phi3v):
    path, reference, tokenizer = phi3v
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    with torch.no_grad():
        references = [reference.greedy(reference.input_embeds(reference_ids(tokenizer, p, imgs), imgs,
                                                              image_token), 6) for p, imgs in CASES]
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=5, ignore_eos=True)
    prompts = [{"prompt": p, "multi_modal_data": {"image": imgs}} for p, imgs in CASES]
    for variant in [{}, {"enable_prefix_caching": False, "max_num_batched_tokens": 64}]:
        llm = LLM(str(path), dtype="float32", device="cpu", **variant)
        outputs = llm.generate(prompts, params, use_tqdm=False)
        for out, (prompt, images) in zip(outputs, CASES, strict=True):
            assert out.prompt_token_ids == reference_ids(tokenizer, prompt, images)
        assert_outputs_match(outputs, references, atol=1e-3)
        engine = llm.engine
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        if variant:
            assert engine.runner.encoders.num_items_encoded == 3  # once per image despite chunking


def test_phi3v_embeddings_match_reference(phi3v):
    """VLM2Vec: the generation class with task="embed", last token, normalised."""
    path, reference, tokenizer = phi3v
    image_token = tokenizer.convert_tokens_to_ids("<|image|>")
    llm = LLM(str(path), dtype="float32", device="cpu", task="embed", max_num_batched_tokens=128)
    cases = [("<|image_1|> Represent the given image.", [random_image(60, 30, 4)]),
             ("Find me an everyday image that matches the given caption: a red car", [])]
    outputs = llm.embed([{"prompt": p, "multi_modal_data": {"image": imgs}} for p, imgs in cases],
                        use_tqdm=False)
    for out, (prompt, images) in zip(outputs, cases, strict=True):
        with torch.no_grad():
            embeds = reference.input_embeds(reference_ids(tokenizer, prompt, images), images, image_token)
            hidden = reference.lm.model(inputs_embeds=embeds[None]).last_hidden_state[0, -1]
        cosine = F.cosine_similarity(out.outputs.data, F.normalize(hidden, dim=-1), dim=0)
        assert cosine >= 0.99999, cosine


def test_phi3v_image_tags(phi3v):
    path, _, _ = phi3v
    llm = LLM(str(path), dtype="float32", device="cpu", task="embed")
    a, b = random_image(40, 40, 5), random_image(60, 30, 6)
    swapped = llm.embed({"prompt": "<|image_2|> then <|image_1|>", "multi_modal_data": {"image": [a, b]}},
                        use_tqdm=False)[0]
    in_order = llm.embed({"prompt": "<|image_1|> then <|image_2|>", "multi_modal_data": {"image": [b, a]}},
                         use_tqdm=False)[0]
    assert swapped.prompt_token_ids == in_order.prompt_token_ids
    torch.testing.assert_close(swapped.outputs.data, in_order.outputs.data, atol=1e-6, rtol=0)
    untagged = llm.embed("then", images=a, use_tqdm=False)[0]  # the placeholder is prepended
    assert untagged.prompt_token_ids.count(llm.processor.placeholder_ids["image"]) == 313
    with pytest.raises(ValueError, match="image tags"):
        llm.embed({"prompt": "<|image_2|>", "multi_modal_data": {"image": [a]}}, use_tqdm=False)
    assert llm.embed("Still serving", use_tqdm=False)[0].outputs.embedding


def test_phi3v_chat_numbers_image_parts(phi3v):
    path, _, _ = phi3v
    llm = LLM(str(path), dtype="float32", device="cpu")
    a, b = random_image(40, 40, 7), random_image(30, 64, 8)
    params = SamplingParams(temperature=0, max_tokens=3)
    parts = [{"type": "image", "image": a}, {"type": "text", "text": "vs"}, {"type": "image", "image": b}]
    chat = llm.chat([{"role": "user", "content": parts}], params, use_tqdm=False)[0]
    prompt = {"prompt": "<|user|><|image_1|>\nvs<|image_2|>\n<|end|><|assistant|>",
              "multi_modal_data": {"image": [a, b]}}
    direct = llm.generate(prompt, params, use_tqdm=False)[0]
    assert chat.prompt_token_ids == direct.prompt_token_ids
    assert chat.outputs[0].token_ids == direct.outputs[0].token_ids
