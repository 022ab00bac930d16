"""Paged KV-cache bookkeeping: block allocation, reference counts and the prefix cache."""

from __future__ import annotations

from collections import OrderedDict

from intarsia.engine.sequence import Sequence


class BlockManager:
    """Hands out fixed-size KV blocks. With prefix caching, a full block is registered
    under its hash-chain key; freed blocks keep their contents (and key) until they
    are reused, least recently freed first, so a later prompt with the same prefix
    picks them up without recomputation."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.cached: dict[bytes, int] = {}  # hash -> block holding those tokens
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def prefix_hits(self, seq: Sequence) -> list[int]:
        """Cached blocks matching the start of `seq`; the last token is always left to
        compute so the step produces logits for it."""
        if not self.enable_prefix_caching:
            return []
        hits = []
        usable = (seq.num_tokens - 1) // self.block_size
        for block_hash in seq.full_block_hashes()[:usable]:
            block = self.cached.get(block_hash)
            if block is None:
                break
            hits.append(block)
        return hits

    def try_allocate_prompt(self, seq: Sequence, num_new_tokens: int, hits: list[int]) -> bool:
        """Give a waiting sequence its cached prefix blocks plus room for
        `num_new_tokens` more; False (and no change) if the cache is too full."""
        reused_free = sum(1 for b in hits if self.ref_counts[b] == 0)
        total = self.blocks_needed(len(hits) * self.block_size + num_new_tokens)
        if total - len(hits) > self.num_free_blocks - reused_free:
            return False
        for block in hits:
            if self.ref_counts[block] == 0:
                del self.free[block]
            self.ref_counts[block] += 1
        seq.block_table = list(hits)
        seq.num_computed_tokens = seq.num_cached_tokens = len(hits) * self.block_size
        seq.num_registered_blocks = len(hits)
        self._grow(seq, total)
        return True

    def can_append(self, seq: Sequence, num_new_tokens: int) -> bool:
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens) - len(seq.block_table)
        return needed <= self.num_free_blocks

    def append(self, seq: Sequence, num_new_tokens: int) -> None:
        self._grow(seq, self.blocks_needed(seq.num_computed_tokens + num_new_tokens))

    def _grow(self, seq: Sequence, total_blocks: int) -> None:
        while len(seq.block_table) < total_blocks:
            block, _ = self.free.popitem(last=False)
            old_hash = self.block_hash[block]
            if old_hash is not None:  # evict its cached contents
                if self.cached.get(old_hash) == block:
                    del self.cached[old_hash]
                self.block_hash[block] = None
            self.ref_counts[block] = 1
            seq.block_table.append(block)

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the blocks of `seq` whose tokens are now all computed."""
        if not self.enable_prefix_caching:
            return
        hashes = seq.full_block_hashes()  # a block whose last token is in flight waits
        num_full = min(seq.num_computed_tokens // self.block_size, len(hashes))
        if num_full <= seq.num_registered_blocks:
            return
        for i in range(seq.num_registered_blocks, num_full):
            block = seq.block_table[i]
            if self.block_hash[block] is None:
                self.block_hash[block] = hashes[i]
                self.cached.setdefault(hashes[i], block)
        seq.num_registered_blocks = num_full

    def release(self, seq: Sequence) -> None:
        # Tail blocks first, so that they are evicted before the shared prefix.
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table = []
        seq.num_computed_tokens = seq.num_registered_blocks = 0
