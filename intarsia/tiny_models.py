"""Tiny random-weight checkpoints built on the spot, for the demo and the tests.

No weights can be downloaded where intarsia is tested, so a checkpoint is a
transformers config, a BPE tokenizer trained here on a small corpus, and
random weights saved with `save_pretrained` (safetensors). Their outputs are
meaningless: they only prove the engine computes what transformers computes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedTokenizerFast

CORPUS = """\
The quick brown fox jumps over the lazy dog. A photo of a cat sitting on a red sofa.
Intarsia is a woodworking technique that inlays pieces of wood into a surface.
Large language models predict the next token from the tokens before it.
Images, video frames and audio clips become embeddings inlaid into the prompt.
What is in this picture? Describe the scene in one sentence. Hello, how are you today?
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Punctuation: , . ; : ! ? ( ) [ ] { } " '
The capital of France is Paris. The sky is blue and the grass is green.
"""

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(vocab_size: int = 512, special_tokens: list[str] | None = None
                    ) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS: <s>=0, </s>=1, <pad>=2, <unk>=3,
    then `special_tokens`, then the learned merges."""
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>",
                "<|end|>", *(special_tokens or [])]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=specials[4:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_model(config: PretrainedConfig, path: str | Path, seed: int = 0,
                    tokenizer: PreTrainedTokenizerFast | None = None,
                    model_cls=AutoModelForCausalLM) -> Path:
    """Build `model_cls` from `config` with seeded random weights and save it, with a
    tokenizer, as a loadable checkpoint folder."""
    path = Path(path)
    torch.manual_seed(seed)
    model = randomize_weights(model_cls.from_config(config, dtype=torch.float32))
    model.save_pretrained(path, safe_serialization=True)
    (tokenizer or train_tokenizer(getattr(config, "vocab_size", 512))).save_pretrained(path)
    return path


@torch.no_grad()
def randomize_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every weight (default inits leave some at 0/1): norms near 1, the rest at
    a scale that keeps activations of order one."""
    for name, param in model.named_parameters():
        if param.dim() == 1 and ("norm" in name or "ln" in name):
            param.copy_(1 + 0.1 * torch.randn_like(param))
        else:
            param.normal_(0, 0.1 if param.dim() == 1 else config_std(param))
    return model


def config_std(param: torch.Tensor) -> float:
    """Init scale giving activations of order one through a few layers."""
    return 1.0 / param.shape[-1] ** 0.5


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    values = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    values.update(overrides)
    return LlamaConfig(**values)
