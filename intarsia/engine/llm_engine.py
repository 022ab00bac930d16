"""The engine loop: schedule, run the model, sample, check stops, emit outputs."""

from __future__ import annotations

import itertools
import time

import torch
from transformers import PreTrainedTokenizerBase

from intarsia.engine.block_manager import BlockManager
from intarsia.engine.config import EngineConfig
from intarsia.engine.detokenizer import IncrementalDetokenizer
from intarsia.engine.model_runner import ModelRunner, StepBatch
from intarsia.engine.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
)
from intarsia.engine.pooler import Pooler
from intarsia.engine.sampler import PendingSample, Sampler
from intarsia.engine.scheduler import Scheduler
from intarsia.engine.sequence import Request, Sequence, Status


def eos_ids_of(config: EngineConfig, tokenizer: PreTrainedTokenizerBase | None) -> set[int]:
    ids: set[int] = set()
    for source in (config.text_config, getattr(config.hf_config, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class LLMEngine:
    def __init__(self, config: EngineConfig, tokenizer: PreTrainedTokenizerBase | None,
                 runner: ModelRunner | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.runner = runner or ModelRunner(config)
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs,
                                   config.max_num_batched_tokens, config.max_model_len)
        self.eos_token_ids = eos_ids_of(config, tokenizer)
        self.generator = torch.Generator(config.device).manual_seed(config.seed)
        self.sampler = Sampler(self.eos_token_ids, self.generator)
        # Classify / reward models score pooled rows with their `score` head.
        self.pooler = Pooler(getattr(self.runner.model, "score", None)
                             if config.task in ("classify", "reward") else None)
        self.vocab_size = self.runner.model.args.vocab_size
        self._seq_ids = itertools.count()
        self._in_flight: tuple[PendingSample, list[Sequence]] | None = None  # the step ahead

    def validate_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise ValueError("the prompt is empty")
        if len(token_ids) >= self.config.max_model_len:
            raise ValueError(f"the prompt has {len(token_ids)} tokens, but max_model_len is "
                             f"{self.config.max_model_len} (room is needed for one output token)")
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary "
                             f"[0, {self.vocab_size})")

    def add_request(self, request: Request) -> None:
        self.validate_prompt(request.prompt_token_ids)
        params = request.params
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator(self.config.device)
                generator.manual_seed(params.seed * 1_000_003 + index)
            seq = Sequence(next(self._seq_ids), request, index, self.config.block_size, generator)
            if params.stop_strings and self.tokenizer is not None:
                seq.detokenizer = IncrementalDetokenizer(
                    self.tokenizer, request.prompt_token_ids, params.skip_special_tokens)
            request.seqs.append(seq)
            self.scheduler.add(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work() or self._in_flight is not None

    def step(self) -> list[Sequence]:
        """Run one step; returns the sequences that finished.

        The engine runs one step ahead of reading samples back: it launches step N+1
        (its decode rows read step N's tokens on the device) before it waits for step N's
        tokens, appends them and checks stops, so the host's work overlaps the device's.
        A sequence that stops at step N has computed one row of N+1 for nothing."""
        scheduled = self.scheduler.schedule()
        finished: list[Sequence] = []
        logits = batch = None
        if scheduled:
            runner = self.runner
            batch = runner.prepare(scheduled, self._in_flight[0].tokens if self._in_flight else None)
            hidden = runner.forward(batch)
            self._prompt_logprobs(batch, hidden)
            pooled = self.pooler.collect(batch.pool_rows, hidden)
            if batch.sample_seqs:
                logits = runner.compute_logits(hidden[batch.sample_rows])
            self.scheduler.update(scheduled)
            for seq in pooled:  # a pooling request keeps no KV after its prompt
                self.scheduler.finish(seq)
            finished += pooled
        finished += self._read_back()
        if logits is not None:
            seqs = [item.seq for item in batch.sample_seqs]
            sample = self.sampler(logits, seqs)
            for row, seq in enumerate(seqs):
                if seq.status is not Status.FINISHED:  # stopped at the step read back above
                    seq.pending_row = row
            self._in_flight = (sample, seqs)
        return finished

    def _read_back(self) -> list[Sequence]:
        """Wait for the in-flight step's samples; append them and check stops."""
        if self._in_flight is None:
            return []
        sample, seqs = self._in_flight
        self._in_flight = None
        result = sample.result()
        finished = []
        for row, seq in enumerate(seqs):
            if seq.pending_row is None:  # it had stopped before this step was sampled
                continue
            seq.pending_row = None
            self._append_token(seq, row, result)
            if seq.status is Status.FINISHED:
                finished.append(seq)
        return finished

    def _append_token(self, seq: Sequence, row: int, sampled) -> None:
        token = sampled.token_ids[row]
        seq.token_ids.append(token)
        metrics = seq.request.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = time.perf_counter()
        if sampled.logprobs is not None:
            seq.cumulative_logprob += sampled.logprobs[row]
            ids, values, rank = sampled.top[row]
            seq.logprobs.append(self._logprob_entry(ids, values, token, sampled.logprobs[row], rank))
        self._check_stop(seq, token)

    def _check_stop(self, seq: Sequence, token: int) -> None:
        p = seq.params
        num_output = seq.num_output_tokens
        if num_output >= p.min_tokens:
            if token in p.stop_token_ids:
                seq.finish_reason, seq.stop_reason = "stop", token
            elif not p.ignore_eos and token in self.eos_token_ids:
                seq.finish_reason = "stop"
        if seq.finish_reason is None and seq.detokenizer is not None:
            seq.detokenizer.add(token)
            if num_output >= p.min_tokens:
                self._check_stop_strings(seq)
        if seq.finish_reason is None and seq.ends_by_length(len(seq.token_ids), self.config.max_model_len):
            seq.finish_reason = "length"
        if seq.finish_reason is not None:
            self.scheduler.finish(seq)

    def _check_stop_strings(self, seq: Sequence) -> None:
        text = seq.detokenizer.text
        for stop in seq.params.stop_strings:
            at = text.find(stop)
            if at >= 0:
                seq.finish_reason, seq.stop_reason = "stop", stop
                seq.text = text[:at]
                return

    def _logprob_entry(self, top_ids: list[int], top_values: list[float], token: int,
                       token_logprob: float, token_rank: int) -> dict[int, Logprob]:
        """The top-k alternatives of one position plus the token actually there."""
        entry = {tid: Logprob(value, rank, self._decode_one(tid))
                 for rank, (tid, value) in enumerate(zip(top_ids, top_values, strict=True), start=1)}
        if token not in entry:
            entry[token] = Logprob(token_logprob, token_rank, self._decode_one(token))
        return entry

    def _decode_one(self, token_id: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id])

    def _prompt_logprobs(self, batch: StepBatch, hidden: torch.Tensor) -> None:
        for item, first, count in batch.prompt_logprob_rows:
            seq = item.seq
            request = seq.request
            if seq.index != 0 or (request.prompt_logprobs is not None
                                  and len(request.prompt_logprobs) > seq.num_computed_tokens):
                continue  # computed once per request (also across preemptions)
            if request.prompt_logprobs is None:
                request.prompt_logprobs = [None]
            logprobs = torch.log_softmax(self.runner.compute_logits(hidden[first:first + count]), -1)
            begin = seq.num_computed_tokens
            targets = torch.tensor(seq.token_ids[begin + 1:begin + 1 + count], device=logprobs.device)
            chosen = logprobs.gather(-1, targets[:, None])[:, 0]
            ranks = (logprobs > chosen[:, None]).sum(-1) + 1
            k = seq.params.prompt_logprobs
            top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
            for i, target in enumerate(targets.tolist()):
                ids, values = (top_ids[i].tolist(), top_vals[i].tolist()) if k else ([], [])
                request.prompt_logprobs.append(
                    self._logprob_entry(ids, values, target, float(chosen[i]), int(ranks[i])))

    def request_output(self, request: Request) -> RequestOutput | PoolingRequestOutput:
        if request.pooling is not None:
            return self._pooling_output(request)
        completions = []
        for seq in request.seqs:
            if seq.detokenizer is not None and seq.finish_reason == "stop" and isinstance(
                    seq.stop_reason, str):
                text = seq.text
            elif self.tokenizer is not None:
                text = self.tokenizer.decode(seq.output_token_ids,
                                             skip_special_tokens=seq.params.skip_special_tokens)
            else:
                text = ""
            want = seq.params.logprobs is not None
            completions.append(CompletionOutput(
                index=seq.index, text=text, token_ids=seq.output_token_ids,
                cumulative_logprob=seq.cumulative_logprob if want else None,
                logprobs=seq.logprobs if want else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason))
        return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                             completions, request.prompt_logprobs,
                             num_cached_tokens=max(seq.num_cached_tokens for seq in request.seqs),
                             metrics=request.metrics)

    def _pooling_output(self, request: Request) -> PoolingRequestOutput:
        data = request.pooled
        output = PoolingOutput(data=data)
        if self.config.task == "embed":
            output.embedding = data.tolist()
        elif self.config.task == "classify":
            output.probs = data.tolist()
        return PoolingRequestOutput(request.request_id, request.prompt, request.prompt_token_ids, output)
