"""Turning logits into tokens, batched over the step's sequences.

Order (as in vLLM): min_tokens masking and penalties, then greedy argmax or
temperature -> min_p -> top_k/top_p -> a seeded draw. Log-probabilities reported
to the user are those of the raw model distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intarsia.engine.sequence import Sequence
from intarsia.transfer import device_tensor, host_tensor


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float] | None  # raw log-probability of each sampled token
    top: list[tuple[list[int], list[float], int]] | None  # (top ids, top logprobs, sampled rank)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition penalty over prompt and output tokens (divide positive logits,
    multiply negative ones); presence and frequency penalties over output tokens."""
    vocab = logits.shape[-1]
    device = logits.device
    for row, seq in enumerate(seqs):
        p = seq.params
        if not p.has_penalties:
            continue
        if p.repetition_penalty != 1.0:
            seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            seen[device_tensor(seq.token_ids, device, torch.int64)] = True
            penalised = torch.where(logits[row] > 0, logits[row] / p.repetition_penalty,
                                    logits[row] * p.repetition_penalty)
            logits[row] = torch.where(seen, penalised, logits[row])
        if seq.num_output_tokens and (p.presence_penalty or p.frequency_penalty):
            counts = torch.zeros(vocab, dtype=logits.dtype, device=device)
            out = device_tensor(seq.output_token_ids, device, torch.int64)
            counts.scatter_add_(0, out, torch.ones_like(out, dtype=logits.dtype))
            logits[row] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return logits


def mask_min_tokens(logits: torch.Tensor, seqs: list[Sequence], eos_ids: set[int]) -> None:
    """Forbid EOS and the stop token ids until a sequence has `min_tokens` outputs."""
    for row, seq in enumerate(seqs):
        p = seq.params
        if seq.num_output_tokens < p.min_tokens:
            banned = set(p.stop_token_ids) | (set() if p.ignore_eos else eos_ids)
            banned = [t for t in banned if t < logits.shape[-1]]
            if banned:
                logits[row, device_tensor(banned, logits.device, torch.int64)] = float("-inf")


def truncate(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
             min_p: torch.Tensor | None) -> torch.Tensor:
    """Mask tokens outside min_p, top_k (-1 = off) and top_p per row; keeps at least
    the most likely token. A None argument is off for every row (and costs nothing)."""
    if min_p is not None:
        probs = torch.softmax(logits, dim=-1)
        threshold = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if top_k is None and top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, logits.shape[-1])
        drop |= rank >= k[:, None]
    if top_p is not None:
        probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop |= mass_before >= top_p[:, None]
    drop[:, 0] = False
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class PendingSample:
    """A step's samples, left on the device (the next step reads its tokens there) and
    copied to pinned host memory without waiting; `result()` waits for that copy only,
    not for work queued after it."""

    def __init__(self, tokens: torch.Tensor, logprob_parts: tuple | None, counts: list[int]) -> None:
        self.tokens = tokens
        self.counts = counts  # logprobs wanted per row
        parts = (tokens, *(logprob_parts or ()))
        self._host = [None if t is None else host_tensor(t) for t in parts]
        self._copied = None
        if tokens.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()

    def result(self) -> SampleResult:
        if self._copied is not None:
            self._copied.synchronize()
        token_ids = self._host[0].tolist()
        if len(self._host) == 1:
            return SampleResult(token_ids, None, None)
        chosen, ranks, top_vals, top_ids = self._host[1:]
        top = []
        for row, n in enumerate(self.counts):
            ids = top_ids[row, :n].tolist() if n else []
            vals = top_vals[row, :n].tolist() if n else []
            top.append((ids, vals, int(ranks[row])))
        return SampleResult(token_ids, chosen.tolist(), top)


class Sampler:
    def __init__(self, eos_token_ids: set[int], generator: torch.Generator) -> None:
        self.eos_token_ids = eos_token_ids
        self.generator = generator

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> PendingSample:
        """logits: [len(seqs), vocab] float32, one row per sequence to sample."""
        want_logprobs = [s.params.logprobs is not None for s in seqs]
        raw_logprobs = torch.log_softmax(logits, dim=-1) if any(want_logprobs) else None
        if any(s.params.has_penalties for s in seqs):
            logits = apply_penalties(logits.clone(), seqs)
        if any(s.num_output_tokens < s.params.min_tokens for s in seqs):
            logits = logits.clone()
            mask_min_tokens(logits, seqs, self.eos_token_ids)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if random_rows:
            rows = device_tensor(random_rows, logits.device, torch.int64)
            tokens[rows] = self._draw(logits[rows], [seqs[i] for i in random_rows])
        counts = [s.params.logprobs or 0 for s in seqs]
        if raw_logprobs is None:
            return PendingSample(tokens, None, counts)
        chosen = raw_logprobs.gather(-1, tokens[:, None])[:, 0]
        ranks = (raw_logprobs > chosen[:, None]).sum(dim=-1) + 1
        top_vals, top_ids = raw_logprobs.topk(max(counts), dim=-1) if max(counts) else (None, None)
        return PendingSample(tokens, (chosen, ranks, top_vals, top_ids), counts)

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        device = logits.device
        temperature = device_tensor([s.params.temperature for s in seqs], device)
        logits = logits / temperature[:, None]
        # Decided on the host, so that no device value is read back mid-step.
        def per_row(name: str, off: float) -> torch.Tensor | None:
            values = [getattr(s.params, name) for s in seqs]
            return None if all(v == off for v in values) else device_tensor(values, device)

        truncated = truncate(logits, per_row("top_k", -1), per_row("top_p", 1.0), per_row("min_p", 0.0))
        probs = torch.softmax(truncated, dim=-1)
        # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, and lets each
        # seeded sequence use its own generator.
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, seq in enumerate(seqs):
            if seq.generator is not None:
                noise[row].exponential_(generator=seq.generator)
        return (probs / noise).argmax(dim=-1)
