"""intarsia: a multimodal-first LLM inference engine."""

from intarsia.engine.llm import LLM, BatchError, LoRARequest
from intarsia.engine.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from intarsia.engine.pooler import PoolerConfig
from intarsia.engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "BatchError",
    "CompletionOutput",
    "Logprob",
    "LoRARequest",
    "PoolerConfig",
    "PoolingOutput",
    "PoolingRequestOutput",
    "RequestOutput",
    "SamplingParams",
    "ScoringOutput",
    "ScoringRequestOutput",
]
