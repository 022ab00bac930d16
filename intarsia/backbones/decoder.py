"""The generic decoder-only transformer every text family is declared over.

An architecture supplies `DecoderArgs` (read off its HF config) and a weight-name
map; the variations between families are fields here, not copied model files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from intarsia.backbones.context import ForwardContext
from intarsia.backbones.layers import (
    GatedMLP,
    HeadNorm,
    LayerNorm,
    Linear,
    PagedAttention,
    PlainMLP,
    RMSNorm,
    default_weight_loader,
    fused_linear,
)
from intarsia.backbones.moe import MoEArgs, SparseMoE
from intarsia.backbones.rotary import RotaryEmbedding


@dataclass
class DecoderArgs:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float = 1e-6
    norm: str = "rms"  # "rms" | "layer"
    norm_offset: float = 0.0  # 1.0: Gemma's (1 + w), or Nemotron's layernorm1p with norm="layer"
    norm_bias: bool = True  # LayerNorm only
    norm_affine: bool = True  # LayerNorm only; False: no weight and no bias (OLMo)
    act: str = "silu"
    gated_mlp: bool = True
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    rope: RotaryEmbedding | None = None  # None: no rotary (ALiBi or learned positions)
    sliding_window: int | None = None
    sliding_layers: list[bool] | None = None  # per layer; None: every layer if window set
    attn_softcap: float | None = None
    final_logit_softcap: float | None = None
    attn_scale: float | None = None  # None: 1/sqrt(head_dim)
    embed_scale: float = 1.0
    logit_scale: float = 1.0
    residual_scale: float = 1.0  # attention and MLP outputs scaled before the residual add (Granite)
    alibi_slopes: torch.Tensor | None = None  # per query head: slope * (key_pos - query_pos) added to scores
    embed_dim: int | None = None  # token-embedding (and LM-head) width when not hidden_size (OPT-350m)
    lm_head_bias: bool = False
    qk_norm: str | None = None  # "shared" | "per_head": HeadNorm on q and k before rotary
    qk_norm_bias: bool = False
    clip_qkv: float | None = None  # q, k, v clamped to [-clip, clip] (MPT, OLMo)
    tie_word_embeddings: bool = False
    moe: MoEArgs | None = None  # mixture-of-experts MLP on the layers it makes sparse (backbones/moe.py)
    extra: dict = field(default_factory=dict)

    def layer_window(self, layer_idx: int) -> int | None:
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None:
            return self.sliding_window
        return self.sliding_window if self.sliding_layers[layer_idx] else None


def make_norm(args: DecoderArgs, dim: int | None = None) -> nn.Module:
    dim = dim or args.hidden_size
    if args.norm == "rms":
        return RMSNorm(dim, args.norm_eps, args.norm_offset)
    return LayerNorm(dim, args.norm_eps, args.norm_bias, args.norm_offset, args.norm_affine)


def make_mlp(args: DecoderArgs, layer_idx: int | None = None) -> nn.Module:
    if args.moe is not None and args.moe.is_sparse(layer_idx):
        return SparseMoE(args.hidden_size, args.moe, args.act)
    mlp = GatedMLP if args.gated_mlp else PlainMLP
    return mlp(args.hidden_size, args.intermediate_size, args.act, args.mlp_bias)


class SelfAttention(nn.Module):
    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        h, kvh, d = args.num_heads, args.num_kv_heads, args.head_dim
        self.q_size, self.kv_size = h * d, kvh * d
        self.qkv_proj = fused_linear(args.hidden_size, {"q": h * d, "k": kvh * d, "v": kvh * d},
                                     args.qkv_bias)
        self.o_proj = Linear(h * d, args.hidden_size, args.o_bias)
        self.rope = args.rope
        scale = args.attn_scale if args.attn_scale is not None else 1 / math.sqrt(d)
        self.attn = PagedAttention(layer_idx, h, kvh, d, scale, args.layer_window(layer_idx),
                                   args.attn_softcap, args.alibi_slopes)
        self.clip_qkv = args.clip_qkv
        self.qk_norm = args.qk_norm
        if args.qk_norm is not None:
            per_head = args.qk_norm == "per_head"
            self.q_norm = HeadNorm(h, d, args.norm_eps, args.norm, per_head, args.qk_norm_bias)
            self.k_norm = HeadNorm(kvh, d, args.norm_eps, args.norm, per_head, args.qk_norm_bias)

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v before rotary; families that clip or normalise them override this."""
        return self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        q, k, v = self.project_qkv(x)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        if self.qk_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self.o_proj(self.attn(q, k, v, ctx, self.rope, positions))


def norm_residual(norm: nn.Module, x: torch.Tensor,
                  residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm(x + residual)` and the new residual `x + residual` (just `x` in the first layer,
    which has no residual yet): the fused add-and-norm every pre-norm layer starts with."""
    if residual is None:
        return norm(x), x
    return norm(x, residual)


class DecoderLayer(nn.Module):
    attn_cls: type[SelfAttention] = SelfAttention  # families override what differs

    def __init__(self, args: DecoderArgs, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = make_norm(args)
        self.self_attn = self.attn_cls(args, layer_idx)
        self.post_attention_layernorm = make_norm(args)
        self.mlp = make_mlp(args, layer_idx)
        self.residual_scale = args.residual_scale

    def forward(self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
                ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor]:
        x, residual = norm_residual(self.input_layernorm, x, residual)
        x = self.self_attn(positions, x, ctx)
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        x, residual = self.post_attention_layernorm(x, residual)
        x = self.mlp(x)
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        return x, residual


class DecoderModel(nn.Module):
    def __init__(self, args: DecoderArgs, layer_cls: type[nn.Module] = DecoderLayer) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.embed_dim or args.hidden_size)
        self.embed_tokens.weight.requires_grad_(False)
        self.layers = nn.ModuleList(layer_cls(args, i) for i in range(args.num_layers))
        self.norm = make_norm(args)
        self.embed_scale = args.embed_scale

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        return x * self.embed_scale if self.embed_scale != 1.0 else x

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        x, residual = inputs_embeds, None
        for layer in self.layers:
            x, residual = layer(positions, x, residual, ctx)
        x, _ = self.norm(x, residual)
        return x


@dataclass(frozen=True)
class WeightMap:
    """How checkpoint tensor names become this model's parameter names.

    `renames` are regex substitutions applied in order; `shards` send a (renamed)
    name fragment to a fused parameter and the shard inside it; names matching
    `ignore` are skipped (e.g. precomputed rotary tables); `transforms` rewrite the
    tensors whose checkpoint name matches a pattern, given the model's DecoderArgs
    (e.g. transposed Conv1D weights, q/k/v rows interleaved per head).
    """

    renames: tuple[tuple[str, str], ...] = ()
    shards: tuple[tuple[str, str, str], ...] = (
        (".q_proj.", ".qkv_proj.", "q"),
        (".k_proj.", ".qkv_proj.", "k"),
        (".v_proj.", ".qkv_proj.", "v"),
        (".gate_proj.", ".gate_up_proj.", "gate"),
        (".up_proj.", ".gate_up_proj.", "up"),
    )
    ignore: tuple[str, ...] = (r"rotary_emb\.inv_freq", r"\.masked_bias$", r"\.attn\.bias$")
    # Regex forms of `shards` whose groups name the shard, e.g. per-expert matrices:
    # (pattern, fused parameter fragment, shard template).
    indexed_shards: tuple[tuple[str, str, str], ...] = ()
    transforms: tuple[tuple[str, Callable[[DecoderArgs, torch.Tensor], torch.Tensor]], ...] = ()

    def transform(self, args: DecoderArgs, name: str, tensor: torch.Tensor) -> torch.Tensor:
        for pattern, fn in self.transforms:
            if re.search(pattern, name):
                tensor = fn(args, tensor)
        return tensor


def load_named_weights(module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                       weight_map: WeightMap) -> None:
    """Load checkpoint tensors into `module`, strictly: unknown names and parameters
    (or shards of fused ones) left unset raise ValueError naming them."""
    params = dict(module.named_parameters())
    loaded: set[tuple[str, str | None]] = set()
    for name, tensor in weights:
        if any(re.search(p, name) for p in weight_map.ignore):
            continue
        target, shard = name, None
        for pattern, replacement in weight_map.renames:
            target = re.sub(pattern, replacement, target)
        for fragment, fused, shard_name in weight_map.shards:
            if fragment in target and target.replace(fragment, fused) in params:
                target, shard = target.replace(fragment, fused), shard_name
                break
        else:
            target, shard = _indexed_shard(target, weight_map)
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter (as {target!r})")
        param = params[target]
        loader = getattr(param, "weight_loader", None)
        try:
            if loader is None:
                default_weight_loader(param, tensor.to(param.dtype))
            elif shard is None:
                loader(param, tensor.to(param.dtype))
            else:
                loader(param, tensor.to(param.dtype), shard)
        except ValueError as e:
            raise ValueError(f"checkpoint tensor {name!r}: {e}") from None
        # A whole tensor fills every shard of a fused parameter.
        shards = [shard] if shard is not None else getattr(_owner(module, target), "shards", None) or [None]
        loaded.update((target, s) for s in shards)
    expected = {
        (name, shard)
        for name, param in params.items()
        for shard in (getattr(_owner(module, name), "shards", None) or {None: None})
    }
    missing = sorted(f"{n}[{s}]" if s else n for n, s in expected - loaded)
    if missing:
        raise ValueError(f"checkpoint is missing weights for {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))


def _indexed_shard(target: str, weight_map: WeightMap) -> tuple[str, str | None]:
    for pattern, fused, template in weight_map.indexed_shards:
        match = re.search(pattern, target)
        if match:
            return target[:match.start()] + fused + target[match.end():], match.expand(template)
    return target, None


def _owner(module: nn.Module, param_name: str) -> nn.Module:
    return module.get_submodule(param_name.rpartition(".")[0])


class CausalLM(nn.Module):
    """Decoder + LM head: the shape of every text-generation model."""

    weight_map = WeightMap()
    # Families override these with subclasses that change only what differs.
    model_cls: type[DecoderModel] = DecoderModel
    layer_cls: type[nn.Module] = DecoderLayer
    # Pooling declarations (backbones/pooling.py) reuse a family's stack without the LM head.
    has_lm_head = True

    @staticmethod
    def adapt(config, max_positions: int) -> DecoderArgs:
        """Read this architecture's HF config into DecoderArgs (each family declares it)."""
        raise NotImplementedError

    def __init__(self, config, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.args = args = self.adapt(config, max_positions)
        self.model = self.model_cls(args, self.layer_cls)
        if self.has_lm_head:
            self.lm_head = Linear(args.embed_dim or args.hidden_size, args.vocab_size, args.lm_head_bias)
            if args.tie_word_embeddings:
                self.lm_head.weight = self.model.embed_tokens.weight

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

    def forward(self, positions: torch.Tensor, inputs_embeds: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return self.model(positions, inputs_embeds, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        if self.args.logit_scale != 1.0:
            logits = logits * self.args.logit_scale
        if self.args.final_logit_softcap is not None:
            cap = self.args.final_logit_softcap
            logits = cap * torch.tanh(logits / cap)
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self.args.tie_word_embeddings:  # some checkpoints store the tied copy too
            weights = ((n, w) for n, w in weights if n != "lm_head.weight")
        if self.weight_map.transforms:
            weights = ((n, self.weight_map.transform(self.args, n, w)) for n, w in weights)
        load_named_weights(self, weights, self.weight_map)


def head_dim_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_layers_of(config) -> list[bool] | None:
    layer_types = getattr(config, "layer_types", None)
    return None if layer_types is None else [t == "sliding_attention" for t in layer_types]


def norm_eps_of(config) -> float:
    """The norm epsilon, under whichever name the family's config uses."""
    for name in ("rms_norm_eps", "layer_norm_eps", "norm_eps", "norm_epsilon", "layer_norm_epsilon"):
        if getattr(config, name, None) is not None:
            return getattr(config, name)
    raise ValueError(f"{type(config).__name__} has no norm epsilon field")


def llama_like_args(config, max_positions: int, **overrides) -> DecoderArgs:
    """DecoderArgs for a config with Llama's field names; families override what differs."""
    head_dim = head_dim_of(config)
    args = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=head_dim,
        intermediate_size=config.intermediate_size,
        norm_eps=overrides["norm_eps"] if "norm_eps" in overrides else norm_eps_of(config),
        act=getattr(config, "hidden_act", None) or config.hidden_activation,  # Gemma 2 spells it so
        qkv_bias=getattr(config, "attention_bias", False),
        o_bias=getattr(config, "attention_bias", False),
        mlp_bias=getattr(config, "mlp_bias", False),
        rope=RotaryEmbedding.from_config(config, head_dim, max_positions),
        sliding_window=getattr(config, "sliding_window", None),
        sliding_layers=sliding_layers_of(config),
        tie_word_embeddings=getattr(config, "tie_word_embeddings", False),
    )
    args.update(overrides)
    return DecoderArgs(**args)
