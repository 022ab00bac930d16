"""Decoder families, each a small declaration over the shared blocks.

Importing this package registers every family with `intarsia.engine.registry`.
"""

from intarsia.backbones import gemma, llama  # noqa: F401
