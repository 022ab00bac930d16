"""Turning a text prompt into token ids; the base of every model's input processor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase


@dataclass
class ProcessedPrompt:
    prompt: str | None
    token_ids: list[int]
    mm_inputs: Any = None  # multimodal items (placeholder ranges, tensors, hashes)


class TextProcessor:
    """Tokenizes text prompts; multimodal processors extend it with media handling."""

    modalities: tuple[str, ...] = ()

    def __init__(self, tokenizer: PreTrainedTokenizerBase | None) -> None:
        self.tokenizer = tokenizer

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass {'prompt_token_ids': [...]}")
        return self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids

    def process(self, prompt: dict, mm_data: dict[str, Any]) -> ProcessedPrompt:
        """`prompt` has "prompt" or "prompt_token_ids"; `mm_data` maps modality -> items."""
        media = {k: v for k, v in mm_data.items() if v is not None and v != []}
        if media:
            raise ValueError(f"this model takes text only, but the prompt came with "
                             f"{', '.join(sorted(media))} input")
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
                raise ValueError("prompt_token_ids must be a list of ints")
            return ProcessedPrompt(prompt.get("prompt"), list(ids))
        text = prompt.get("prompt")
        if not isinstance(text, str):
            raise ValueError(f"a prompt must be a string or a dict with 'prompt' or "
                             f"'prompt_token_ids', got {type(text).__name__}")
        # Chat-rendered prompts already hold their special tokens.
        add_special = prompt.get("add_special_tokens", True)
        return ProcessedPrompt(text, self.tokenize(text, add_special) if text else [])

    def render_chat(self, messages: list[dict], chat_template: str | None,
                    add_generation_prompt: bool) -> tuple[str, dict[str, list]]:
        """Render a conversation to a prompt string through the chat template; returns
        the text and the media items found in the messages (none for text models)."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer, so it has no chat template")
        flat = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                kinds = {part.get("type") for part in content} - {"text"}
                if kinds:
                    raise ValueError(f"this model takes text only, but the message has "
                                     f"{', '.join(sorted(map(str, kinds)))} content")
                content = "".join(part["text"] for part in content)
            flat.append({**message, "content": content})
        text = self.tokenizer.apply_chat_template(
            flat, chat_template=chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt)
        return text, {}
