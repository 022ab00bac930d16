"""Incremental detokenization: new text per token without re-decoding the whole output."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


class IncrementalDetokenizer:
    """Decodes a growing token list a few tokens at a time.

    Tokenizers merge bytes and spaces across token boundaries, so a token's text is
    the difference between decoding a short window with and without it (the window
    starts a few tokens back). Text ending in U+FFFD is an incomplete UTF-8
    character and is held back until the next token completes it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int],
                 skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = list(prompt_ids[-6:])  # context so the first output token decodes right
        self.prefix_offset = max(len(self.ids) - 5, 0)
        self.read_offset = len(self.ids)
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def add(self, token_id: int) -> str:
        """Append one token; returns the text it completed (maybe empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            new_text = full[len(prefix):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            self.text += new_text
            return new_text
        return ""
