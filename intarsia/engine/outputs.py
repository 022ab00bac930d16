"""Result objects returned by `LLM` (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None  # 1 = most likely token
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None  # "stop" | "length"
    stop_reason: int | str | None = None  # the stop token id or string that ended it


@dataclass
class RequestMetrics:
    """`time.perf_counter()` stamps: when the request was made (its prompt processed),
    when its first output token existed, and when it finished."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[dict[int, Logprob] | None] | None = None
    finished: bool = True
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    metrics: RequestMetrics | None = None


@dataclass
class PoolingOutput:
    """What a pooling model returns for one prompt; the task decides which field is set."""

    data: torch.Tensor
    embedding: list[float] | None = None
    probs: list[float] | None = None


@dataclass
class PoolingRequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: PoolingOutput
    finished: bool = field(default=True)


@dataclass
class ScoringOutput:
    score: float  # cosine similarity of the two embeddings


@dataclass
class ScoringRequestOutput:
    """One (query, document) pair scored by `LLM.score`; the ids are the pair's, joined."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: ScoringOutput
    finished: bool = True
