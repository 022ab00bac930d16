"""Prompts with media: items processed through the checkpoint's transformers
processor, placeholders expanded to each item's exact token count, content hashes.

The result, `MultiModalInputs`, rides on `Request.mm_inputs`: the prefix cache asks
it for the item hashes inside each KV block, and the model runner for the items
(and M-RoPE positions) inside each scheduled chunk.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, PretrainedConfig, PreTrainedTokenizerBase, ProcessorMixin

from intarsia.processors import media
from intarsia.processors.text import ProcessedPrompt, TextProcessor

MODALITIES = ("image", "video", "audio")
# Keys of a HF processor's output that describe the text, not the item.
_TEXT_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}
# mm_processor_kwargs consumed while loading media, not passed to the HF processor.
_LOADER_KWARGS = {"num_frames", "fps"}


@dataclass
class MultiModalItem:
    """One image, video or audio clip of a prompt.

    Its encoder output (`length` rows, or `data["embeds"]` when precomputed) replaces
    the prompt tokens `[offset, offset + length)`.
    """

    modality: str
    offset: int
    length: int
    data: dict[str, torch.Tensor]  # the HF processor's tensors for this item (a batch of one)
    hash: bytes

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def embeds(self) -> torch.Tensor | None:
        """Precomputed encoder output, when the user passed embeddings."""
        return self.data.get("embeds")


@dataclass
class MultiModalInputs:
    items: list[MultiModalItem]  # in prompt order, non-overlapping
    mrope_positions: torch.Tensor | None = None  # [3, prompt_len] for M-RoPE models
    mrope_delta: int = 0  # position of generated token i is i + delta (all three rows)
    prefix_len: int = 0  # prefix-LM models: tokens [0, prefix_len) attend to each other both ways

    def items_in_range(self, start: int, end: int) -> list[MultiModalItem]:
        return [item for item in self.items if item.offset < end and item.end > start]

    def hashes_in_range(self, start: int, end: int) -> list[bytes]:
        return [item.hash for item in self.items_in_range(start, end)]

    def positions(self, start: int, end: int) -> torch.Tensor:
        """M-RoPE positions [3, end - start] of tokens `[start, end)`, generated ones too."""
        prompt_len = self.mrope_positions.shape[1]
        known = self.mrope_positions[:, start:min(end, prompt_len)]
        if end <= prompt_len:
            return known
        later = torch.arange(max(start, prompt_len), end) + self.mrope_delta
        return torch.cat((known, later.expand(3, -1)), dim=1)


@dataclass
class ProcessedItem:
    """The model-facing form of one media item, cached by content hash."""

    data: dict[str, torch.Tensor]
    num_tokens: int
    hash: bytes
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.nbytes = sum(t.numel() * t.element_size() for t in self.data.values()
                          if isinstance(t, torch.Tensor))


class ProcessedItemCache:
    """LRU of processed items keyed by content hash (and processor kwargs), bounded in
    bytes, so a repeated image is not decoded and preprocessed again. Prompts are
    processed on worker threads, hence the lock."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.entries: OrderedDict[bytes, ProcessedItem] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: bytes) -> ProcessedItem | None:
        with self.lock:
            item = self.entries.get(key)
            if item is not None:
                self.entries.move_to_end(key)
            return item

    def put(self, key: bytes, item: ProcessedItem) -> None:
        with self.lock:
            if key in self.entries or item.nbytes > self.max_bytes:
                return
            self.entries[key] = item
            self.nbytes += item.nbytes
            while self.nbytes > self.max_bytes:
                _, evicted = self.entries.popitem(last=False)
                self.nbytes -= evicted.nbytes


def _hash_update(digest: Any, value: Any) -> None:
    """Feed a media object (or nested kwargs) into `digest` by content."""
    if isinstance(value, Image.Image):
        digest.update(f"img{value.mode}{value.size}".encode())
        digest.update(value.tobytes())
    elif isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        digest.update(f"t{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.contiguous().view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"a{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            digest.update(str(key).encode())
            _hash_update(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"l{len(value)}".encode())
        for part in value:
            _hash_update(digest, part)
    else:
        digest.update(json.dumps(value, sort_keys=True, default=str).encode())


def content_hash(*parts: Any) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        _hash_update(digest, part)
    return digest.digest()


def _as_list(value: Any, modality: str) -> list:
    """The items of one modality: a list of items, or one item. A list of PIL frames
    given as a video is one video."""
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    if modality == "video" and value and all(isinstance(v, Image.Image) for v in value):
        return [value]
    return list(value)


class MultiModalProcessor(TextProcessor):
    """The prompt processor of a model with encoders, driven by its HF processor.

    Each item is run through the HF processor on its own, with the bare placeholder
    as text: the tensors it returns are the item's inputs, and the number of
    placeholder tokens it expands to is the item's length. The prompt's own
    placeholders are then expanded to those lengths in the token ids, which equals
    what the HF processor produces for the whole prompt (special tokens split text).
    Architectures subclass this to declare their modalities and special cases.
    """

    modalities: tuple[str, ...] = ("image",)
    # Where the HF processor keeps each modality's placeholder token (an attribute).
    placeholder_attrs = {"image": "image_token", "video": "video_token", "audio": "audio_token"}
    # The HF processor's argument for each modality.
    hf_media_args = {"image": "images", "video": "videos", "audio": "audio"}

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None, model_path: Path,
                 hf_config: PretrainedConfig, limits: dict[str, int] | None = None,
                 hf_processor: ProcessorMixin | None = None, media_dtype: torch.dtype | None = None) -> None:
        if hf_processor is None:
            try:
                hf_processor = AutoProcessor.from_pretrained(model_path)
            except (OSError, ValueError, TypeError) as e:
                raise ValueError(f"cannot load the multimodal processor of {model_path}: {e}") from e
        super().__init__(tokenizer or hf_processor.tokenizer)
        self.hf_processor = hf_processor
        # Floating media tensors are stored in the model's dtype (the encoders cast to it
        # first, as transformers' do): half the bytes to keep, ship and copy to the device.
        self.media_dtype = media_dtype
        self.hf_config = hf_config
        self.hidden_size = hf_config.get_text_config().hidden_size
        self.limits = dict(limits or {})
        unknown = set(self.limits) - set(MODALITIES)
        if unknown:
            raise ValueError(f"limit_mm_per_prompt has unknown modalities {sorted(unknown)}; "
                             f"known: {', '.join(MODALITIES)}")
        self.cache = ProcessedItemCache()
        self.placeholder_tokens = {m: getattr(hf_processor, self.placeholder_attrs[m])
                                   for m in self.modalities}
        self.placeholder_ids = {m: self.tokenizer.convert_tokens_to_ids(token)
                                for m, token in self.placeholder_tokens.items()}

    # -- per-architecture hooks --------------------------------------------------------

    def placeholder_prompt(self, modality: str) -> str:
        """The text standing for one item in a prompt (prepended when a prompt has none)."""
        return self.placeholder_tokens[modality]

    def sampling_rate(self) -> int:
        return self.hf_processor.feature_extractor.sampling_rate

    def check_embeddings(self, modality: str, data: dict[str, torch.Tensor], num_tokens: int) -> None:
        """Validate the extra keys of precomputed embeddings (e.g. grid sizes)."""

    def finalize(self, token_ids: list[int], items: list[MultiModalItem]) -> MultiModalInputs:
        """Build the request's inputs; M-RoPE models add positions here."""
        return MultiModalInputs(items)

    # -- processing --------------------------------------------------------------------

    def process(self, prompt: dict, mm_data: dict[str, Any]) -> ProcessedPrompt:
        media_items = {m: _as_list(v, m) for m, v in mm_data.items()}
        media_items = {m: v for m, v in media_items.items() if v}
        if not media_items:
            return super().process(prompt, {})
        unsupported = sorted(set(media_items) - set(self.modalities))
        if unsupported:
            raise ValueError(f"unsupported media type {', '.join(unsupported)} for this model; it "
                             f"takes {', '.join(self.modalities)}")
        for modality, items in media_items.items():
            limit = self.limits.get(modality)
            if limit is not None and len(items) > limit:
                raise ValueError(f"the prompt has {len(items)} {modality} items, more than "
                                 f"limit_mm_per_prompt[{modality!r}] = {limit}")
        kwargs = dict(prompt.get("mm_processor_kwargs") or {})
        processed = {m: [self._process_item(m, item, kwargs) for item in items]
                     for m, items in media_items.items()}
        token_ids = self._prompt_token_ids(prompt, media_items)
        token_ids, items = self._expand(token_ids, processed)
        return ProcessedPrompt(prompt.get("prompt"), token_ids, self.finalize(token_ids, items))

    def _prompt_token_ids(self, prompt: dict, media_items: dict[str, list]) -> list[int]:
        """Token ids with one placeholder per item (prepended if the prompt has none)."""
        missing = [m for m in self.modalities if media_items.get(m)]
        if "prompt_token_ids" in prompt:
            ids = super().process({"prompt_token_ids": prompt["prompt_token_ids"]}, {}).token_ids
            missing = [m for m in missing if self.placeholder_ids[m] not in ids]
            prefix = self.tokenize("".join(self.placeholder_prompt(m) * len(media_items[m])
                                           for m in missing), add_special_tokens=False)
            at = 1 if ids and ids[0] == self.tokenizer.bos_token_id else 0
            return ids[:at] + prefix + ids[at:]
        text = prompt.get("prompt")
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or "
                             f"'prompt_token_ids', got {type(text).__name__}")
        missing = [m for m in missing if self.placeholder_tokens[m] not in text]
        text = "".join(self.placeholder_prompt(m) * len(media_items[m]) for m in missing) + text
        return self.tokenize(text, prompt.get("add_special_tokens", True))

    def _expand(self, token_ids: list[int], processed: dict[str, list[ProcessedItem]]
                ) -> tuple[list[int], list[MultiModalItem]]:
        by_id = {self.placeholder_ids[m]: m for m in self.modalities}
        for modality in self.modalities:
            found = token_ids.count(self.placeholder_ids[modality])
            given = len(processed.get(modality, []))
            if found != given:
                raise ValueError(f"the prompt has {found} {modality} placeholders "
                                 f"({self.placeholder_tokens[modality]!r}) but {given} {modality} "
                                 f"items were given")
        queues = {m: iter(v) for m, v in processed.items()}
        expanded: list[int] = []
        items: list[MultiModalItem] = []
        for token in token_ids:
            modality = by_id.get(token)
            if modality is None:
                expanded.append(token)
                continue
            item = next(queues[modality])
            items.append(MultiModalItem(modality, len(expanded), item.num_tokens, item.data, item.hash))
            expanded.extend([token] * item.num_tokens)
        return expanded, items

    def _process_item(self, modality: str, source: Any, kwargs: dict[str, Any]) -> ProcessedItem:
        if isinstance(source, dict):
            return self._embedding_item(modality, source)
        loader_kwargs = {k: v for k, v in kwargs.items() if k in _LOADER_KWARGS}
        hf_kwargs = {k: v for k, v in kwargs.items() if k not in _LOADER_KWARGS}
        if modality == "image":
            loaded = media.load_image(source)
        elif modality == "video":
            loaded = media.load_video(source, **loader_kwargs)
        else:
            loaded = media.load_audio(source, self.sampling_rate())
        key = content_hash(modality, loaded, kwargs)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        try:
            out = self.hf_processor(text=self.placeholder_tokens[modality],
                                    **{self.hf_media_args[modality]: [loaded]},
                                    return_tensors="pt", **hf_kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ValueError(f"the {modality} processor rejected the input: {e}") from e
        num_tokens = int((out["input_ids"] == self.placeholder_ids[modality]).sum())
        data = {k: v.to(self.media_dtype) if v.is_floating_point() and self.media_dtype else v
                for k, v in out.items() if k not in _TEXT_KEYS and isinstance(v, torch.Tensor)}
        item = ProcessedItem(data, num_tokens, key)
        self.cache.put(key, item)
        return item

    def _embedding_item(self, modality: str, source: dict) -> ProcessedItem:
        """Precomputed encoder outputs `{"<modality>_embeds": [tokens, hidden], ...extra}`."""
        name = f"{modality}_embeds"
        embeds = source.get(name)
        if not isinstance(embeds, torch.Tensor):
            raise ValueError(f"precomputed {modality} input must be a dict with a tensor "
                             f"{name!r}, got keys {sorted(source)}")
        if embeds.dim() == 3 and embeds.shape[0] == 1:
            embeds = embeds[0]
        if embeds.dim() != 2 or embeds.shape[-1] != self.hidden_size:
            raise ValueError(f"{name} must be [tokens, {self.hidden_size}] (the model's hidden "
                             f"size), got shape {tuple(embeds.shape)}")
        data = {k: torch.as_tensor(v) for k, v in source.items() if k != name}
        self.check_embeddings(modality, data, embeds.shape[0])
        data["embeds"] = embeds
        return ProcessedItem(data, embeds.shape[0], content_hash(modality, "embeds", source))

    # -- chat --------------------------------------------------------------------------

    def render_chat(self, messages: list[dict], chat_template: str | None,
                    add_generation_prompt: bool) -> tuple[str, dict[str, list]]:
        """Render OpenAI-style content parts (`text`, `image`, `image_url`, `video`,
        `video_url`, `audio`, `audio_url`, `input_audio`) through the HF processor's
        chat template; returns the prompt and the media in order of appearance."""
        mm_data: dict[str, list] = {}
        conversation = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    kind = part.get("type")
                    if kind == "text":
                        parts.append({"type": "text", "text": part["text"]})
                        continue
                    modality, source = _media_part(part)
                    if modality not in self.modalities:
                        raise ValueError(f"unsupported media type {modality} in a chat message; this "
                                         f"model takes {', '.join(self.modalities)}")
                    mm_data.setdefault(modality, []).append(source)
                    parts.append({"type": modality})
                content = parts
            conversation.append({**message, "content": content})
        template = chat_template or self.hf_processor.chat_template or self.tokenizer.chat_template
        if template is None:
            raise ValueError("this model has no chat template; pass chat_template=")
        text = self.hf_processor.apply_chat_template(
            conversation, chat_template=template, tokenize=False,
            add_generation_prompt=add_generation_prompt)
        return text, mm_data


def _media_part(part: dict) -> tuple[str, Any]:
    """(modality, source) of one OpenAI-style content part."""
    kind = part.get("type")
    if kind in ("image", "video", "audio"):
        source = part.get(kind)
        if source is None:
            raise ValueError(f"a {kind!r} content part needs the media under the key {kind!r}")
        return kind, source
    if kind in ("image_url", "video_url", "audio_url"):
        ref = part.get(kind)
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str):
            raise ValueError(f"a {kind!r} content part needs {{'{kind}': {{'url': ...}}}}")
        return kind.removesuffix("_url"), url
    if kind == "input_audio":
        data = (part.get("input_audio") or {}).get("data")
        if not isinstance(data, str):
            raise ValueError("an 'input_audio' content part needs {'input_audio': {'data': base64}}")
        return "audio", "data:audio;base64," + data
    raise ValueError(f"unsupported content part type {kind!r}; use text, image, image_url, video, "
                     "video_url, audio, audio_url or input_audio")
