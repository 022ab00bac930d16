"""Continuous batching with chunked prefill under a per-step token budget."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from intarsia.engine.block_manager import BlockManager
from intarsia.engine.sequence import Sequence, Status


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """True when this step computes the sequence's last known token, so its logits
        give the next one (partial prefill chunks produce nothing to sample)."""
        return self.seq.num_computed_tokens + self.num_new_tokens == self.seq.num_tokens


class Scheduler:
    """Each step: running sequences first (one token each when decoding, the next
    chunk when still prefilling), then waiting ones while the token budget, the
    sequence limit and the KV cache allow. When the cache runs out, the most recently
    admitted sequence is preempted: its blocks are freed and it is recomputed later."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.pending_row is not None and seq.ends_by_length(seq.num_tokens, self.max_model_len):
                i += 1  # finishes by length when its in-flight token is read: nothing to run
                continue
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if self.block_manager.blocks_needed(seq.num_computed_tokens + num_new) <= len(seq.block_table):
                # Fits in the blocks it holds (most decode steps): nothing to allocate.
                scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
                i += 1
                continue
            while not self.block_manager.can_append(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                self.block_manager.append(seq, num_new)
                scheduled.append(ScheduledSeq(seq, num_new))
                budget -= num_new
                i += 1
        while (self.waiting and budget > 0 and not preempted
               and len(self.running) < self.max_num_seqs):
            seq = self.waiting[0]
            pooling = seq.request.pooling
            # Prompt logprobs and MEAN/CLS/ALL pooling read every prompt row: no cache hits.
            reads_every_row = (seq.params.prompt_logprobs is not None
                               or (pooling is not None and pooling.needs_whole_prompt))
            hits = [] if reads_every_row else self.block_manager.prefix_hits(seq)
            num_new = min(seq.num_tokens - len(hits) * self.block_manager.block_size, budget)
            # A bidirectional prefix (prefix-LM models) is computed in one chunk: it waits for
            # a step that starts with it, where it may exceed the token budget.
            prefix_left = seq.prefix_len - len(hits) * self.block_manager.block_size
            if prefix_left > num_new:
                if scheduled:
                    break
                num_new = prefix_left
            if not self.block_manager.try_allocate_prompt(seq, num_new, hits):
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, num_new))
            budget -= num_new
        return scheduled

    def _preempt(self, seq: Sequence) -> None:
        self.block_manager.release(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        # A sequence preempted while its last token was in flight finishes from the queue.
        (self.running if seq.status is Status.RUNNING else self.waiting).remove(seq)
        seq.status = Status.FINISHED
        self.block_manager.release(seq)

    def update(self, scheduled: list[ScheduledSeq]) -> None:
        """Record the tokens computed this step (before new tokens are appended)."""
        for item in scheduled:
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.cache_full_blocks(item.seq)
