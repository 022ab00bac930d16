"""`LLM`: the offline entry point (the public API of DESIGN.md)."""

from __future__ import annotations

import itertools
import os
import time
import warnings
import weakref
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from intarsia.engine.config import EngineConfig
from intarsia.engine.llm_engine import LLMEngine
from intarsia.engine.outputs import (
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from intarsia.engine.pooler import PoolerConfig
from intarsia.engine.sampling_params import SamplingParams
from intarsia.engine.sequence import Request
from intarsia.processors.pool import ProcessorPool
from intarsia.processors.text import TextProcessor

PromptType = str | dict[str, Any]
MODALITY_ARGS = {"images": "image", "videos": "video", "audio": "audio"}
_POOLING_PARAMS = SamplingParams(max_tokens=1)  # pooling requests sample nothing
_POOLING_METHODS = {"embed": "an embedding", "classify": "a classification", "reward": "a reward"}


@dataclass
class LoRARequest:
    """A PEFT adapter to apply to one request: a name, a unique positive id, a path."""

    lora_name: str
    lora_int_id: int
    lora_path: str


class BatchError(ValueError):
    """Some prompts of a batch were rejected; the others ran. `outputs` holds their
    results in order (None where rejected), `errors` maps prompt index -> message."""

    def __init__(self, errors: dict[int, str], outputs: list) -> None:
        self.errors, self.outputs = errors, outputs
        details = "; ".join(f"prompt {i}: {msg}" for i, msg in errors.items())
        super().__init__(f"{len(errors)} of {len(outputs)} prompts were rejected: {details}")


def _load_tokenizer(config: EngineConfig) -> PreTrainedTokenizerBase | None:
    try:
        return AutoTokenizer.from_pretrained(config.model_path)
    except (OSError, ValueError, TypeError) as e:
        warnings.warn(f"no tokenizer loaded from {config.model_path} ({e}); only "
                      "prompt_token_ids inputs will work", stacklevel=3)
        return None


def _build_processor(config: EngineConfig, tokenizer: PreTrainedTokenizerBase | None = None
                     ) -> TextProcessor:
    """The prompt processor of the model (in a preprocessing worker, tokenizer included)."""
    if tokenizer is None:
        tokenizer = _load_tokenizer(config)
    if config.entry.processor is None:
        return TextProcessor(tokenizer)
    return config.entry.processor(tokenizer, config.model_path, config.hf_config,
                                  config.limit_mm_per_prompt, media_dtype=config.dtype)


def _prompt_batch(prompts: PromptType | list[PromptType], media: dict[str, Any]
                  ) -> tuple[bool, list[PromptType], dict[str, list]]:
    """(whether one bare prompt was given, the prompts as a list, the per-prompt media)."""
    single = not isinstance(prompts, (list, tuple))
    prompt_list = [prompts] if single else list(prompts)
    if not prompt_list:
        raise ValueError("no prompts given")
    return single, prompt_list, {name: _per_prompt(value, len(prompt_list), name)
                                 for name, value in media.items() if value is not None}


def _per_prompt(value: Any, count: int, name: str) -> list:
    """Broadcast one value to every prompt, or check a per-prompt list."""
    if isinstance(value, list) and len(value) == count and (count > 1 or isinstance(
            value[0] if value else None, (list, SamplingParams, type(None)))):
        return value
    if count == 1:
        return [value]
    if isinstance(value, list):
        raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
    return [value] * count


class LLM:
    """Load a model and generate from (or pool over) prompts with media.

    >>> llm = LLM(model="path/or/hub-id")
    >>> llm.generate("Hello", SamplingParams(temperature=0, max_tokens=8))[0].outputs[0].text

    Pooling tasks (`task="embed" | "classify" | "reward"`, or the architecture's own
    with "auto") take `pooler_config=`: a `PoolerConfig`, or a dict overriding some of
    its fields (`{"pooling_type": "MEAN", "normalize": False}`) over the defaults of the
    task, the architecture and the checkpoint's sentence-transformers files.
    """

    def __init__(self, model: str, dtype: str | torch.dtype = "auto", device: str | None = None,
                 task: str = "auto", max_model_len: int | None = None, max_num_seqs: int = 256,
                 block_size: int = 16, enable_prefix_caching: bool = True,
                 enable_lora: bool = False, max_loras: int = 4, max_lora_rank: int = 16,
                 limit_mm_per_prompt: dict[str, int] | None = None, seed: int = 0,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 **engine_kwargs: Any) -> None:
        if tensor_parallel_size != 1 or pipeline_parallel_size != 1:
            raise ValueError("tensor/pipeline parallelism is not supported yet; use size 1")
        if enable_lora:
            raise ValueError("LoRA adapters are not supported yet (enable_lora=True)")
        self.config = EngineConfig.create(
            model, dtype=dtype, device=device, task=task, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, block_size=block_size,
            enable_prefix_caching=enable_prefix_caching, seed=seed,
            limit_mm_per_prompt=limit_mm_per_prompt, **engine_kwargs)
        self.tokenizer = _load_tokenizer(self.config)
        self.processor = _build_processor(self.config, self.tokenizer)
        self.engine = LLMEngine(self.config, self.tokenizer)
        self._processor_pool = None
        if self.config.mm_preprocess_processes:
            self._processor_pool = ProcessorPool(partial(_build_processor, self.config),
                                                 self.config.mm_preprocess_processes)
            weakref.finalize(self, self._processor_pool.close)
        self._request_ids = itertools.count(1)

    def get_tokenizer(self) -> PreTrainedTokenizerBase | None:
        return self.tokenizer

    def generate(self, prompts: PromptType | list[PromptType],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None, *,
                 images: Any = None, videos: Any = None, audio: Any = None,
                 use_tqdm: bool = True, lora_request: LoRARequest | None = None,
                 ) -> list[RequestOutput]:
        """Generate a completion for each prompt. Media arguments are per prompt (one
        item, or a list of items); a dict prompt may carry `multi_modal_data` instead."""
        if self.config.task != "generate":
            raise ValueError(f"generate() needs a generation model; this one runs task "
                             f"{self.config.task!r} (use {self.config.task}())")
        if lora_request is not None:
            raise ValueError("LoRA adapters are not supported yet")
        single, prompt_list, media = _prompt_batch(
            prompts, {"images": images, "videos": videos, "audio": audio})
        params = _per_prompt(sampling_params or SamplingParams(), len(prompt_list), "sampling_params")
        return self._submit(prompt_list, params, media, single, use_tqdm)

    def embed(self, prompts: PromptType | list[PromptType], *, images: Any = None,
              videos: Any = None, audio: Any = None, use_tqdm: bool = True
              ) -> list[PoolingRequestOutput]:
        """Embed each prompt (with its media, as in `generate`): `.outputs.embedding`.
        Needs task="embed" (an embedding model, or a generation model loaded with
        task="embed"); pooling per `LLM(..., pooler_config=...)`."""
        return self._pool("embed", prompts, use_tqdm,
                          {"images": images, "videos": videos, "audio": audio})

    def classify(self, prompts: PromptType | list[PromptType], *, use_tqdm: bool = True
                 ) -> list[PoolingRequestOutput]:
        """Class probabilities of each prompt: `.outputs.probs` (task="classify")."""
        return self._pool("classify", prompts, use_tqdm, {})

    def reward(self, prompts: PromptType | list[PromptType], *, use_tqdm: bool = True
               ) -> list[PoolingRequestOutput]:
        """Per-token rewards of each prompt: `.outputs.data`, [num_tokens, num_labels]
        (task="reward")."""
        return self._pool("reward", prompts, use_tqdm, {})

    def score(self, queries: PromptType | list[PromptType],
              documents: PromptType | list[PromptType], *, use_tqdm: bool = True
              ) -> list[ScoringRequestOutput]:
        """Cosine similarity of embeddings: one query against every document, or the
        i-th query against the i-th document. Prompts may be dicts with
        `multi_modal_data`, so text queries can rank images."""
        if self.config.task != "embed":
            raise ValueError(f"score() compares embeddings and needs task='embed'; this LLM "
                             f"runs task {self.config.task!r}")
        query_list = list(queries) if isinstance(queries, (list, tuple)) else [queries]
        document_list = list(documents) if isinstance(documents, (list, tuple)) else [documents]
        if not query_list or not document_list:
            raise ValueError("score() needs at least one query and one document")
        if len(query_list) not in (1, len(document_list)):
            raise ValueError(f"score() takes one query or one per document; got {len(query_list)} "
                             f"queries for {len(document_list)} documents")
        try:
            embedded = self.embed(query_list + document_list, use_tqdm=use_tqdm)
        except BatchError as e:
            names = [f"query {i}" for i in range(len(query_list))] + [
                f"document {i}" for i in range(len(document_list))]
            raise ValueError("score() could not embed " + "; ".join(
                f"{names[i]}: {msg}" for i, msg in e.errors.items())) from e
        query_out, document_out = embedded[:len(query_list)], embedded[len(query_list):]
        if len(query_out) == 1:
            query_out = query_out * len(document_out)
        similarity = F.cosine_similarity(torch.stack([q.outputs.data for q in query_out]),
                                         torch.stack([d.outputs.data for d in document_out]), dim=-1)
        return [ScoringRequestOutput(f"{q.request_id}_{d.request_id}",
                                     q.prompt_token_ids + d.prompt_token_ids, ScoringOutput(float(s)))
                for q, d, s in zip(query_out, document_out, similarity.tolist(), strict=True)]

    def _pool(self, task: str, prompts: PromptType | list[PromptType], use_tqdm: bool,
              media: dict[str, Any]) -> list[PoolingRequestOutput]:
        if self.config.task != task:
            hint = (" (a generation model embeds too: LLM(model, task='embed'))"
                    if task == "embed" and self.config.task == "generate" else "")
            raise ValueError(f"{task}() needs {_POOLING_METHODS[task]} model (task={task!r}); this "
                             f"LLM runs task {self.config.task!r}{hint}")
        single, prompt_list, media = _prompt_batch(prompts, media)
        return self._submit(prompt_list, [_POOLING_PARAMS] * len(prompt_list), media, single,
                            use_tqdm, self.config.pooler_config)

    def _submit(self, prompt_list: list[PromptType], params: list, media: dict[str, list],
                single: bool, use_tqdm: bool, pooling: PoolerConfig | None = None) -> list:
        """Make a request of each prompt and run them together; a prompt that cannot
        become a request fails alone (ValueError for one prompt, else BatchError).

        Prompts are processed on worker threads (media decoding and HF processors for
        multimodal models, handed on to worker processes where `mm_preprocess_processes`
        is set) and join the running batch as soon as each is ready, so preprocessing
        overlaps the engine's steps."""

        def make(i: int) -> Request:
            if not isinstance(params[i], SamplingParams):
                raise ValueError(f"sampling_params must be SamplingParams, got {type(params[i]).__name__}")
            return self._make_request(prompt_list[i], params[i], {k: v[i] for k, v in media.items()},
                                      pooling)

        workers = min(8, os.cpu_count() or 1) if self.config.entry.multimodal and not single else 1
        with ThreadPoolExecutor(workers, thread_name_prefix="intarsia-prompt") as pool:
            futures = [pool.submit(make, i) for i in range(len(prompt_list))]
            if single:
                try:
                    futures[0].result()
                except (ValueError, FileNotFoundError) as e:
                    raise ValueError(str(e)) from e
            done, errors = self._run(futures, use_tqdm)
        outputs = [done.get(i) for i in range(len(prompt_list))]
        if errors:
            raise BatchError(errors, outputs)
        return outputs

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None, *,
             chat_template: str | None = None, add_generation_prompt: bool = True,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate replies to one conversation (a list of messages) or several, rendered
        through the model's chat template; content parts may carry media."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            text, mm_data = self.processor.render_chat(conversation, chat_template,
                                                       add_generation_prompt)
            prompts.append({"prompt": text, "multi_modal_data": mm_data,
                            "add_special_tokens": False})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

    def _make_request(self, prompt: PromptType, params: SamplingParams, media: dict[str, Any],
                      pooling: PoolerConfig | None = None) -> Request:
        if isinstance(prompt, str):
            prompt = {"prompt": prompt}
        if not isinstance(prompt, dict):
            raise ValueError(f"a prompt must be a string or a dict, got {type(prompt).__name__}")
        mm_data = dict(prompt.get("multi_modal_data") or {})
        for arg, modality in MODALITY_ARGS.items():
            if media.get(arg) is not None:
                if modality in mm_data:
                    raise ValueError(f"{modality} given both as {arg}= and in multi_modal_data")
                mm_data[modality] = media[arg]
        processed = (self._processor_pool or self.processor).process(prompt, mm_data)
        request = Request(str(next(self._request_ids)), processed.prompt, processed.token_ids,
                          params, pooling=pooling, mm_inputs=processed.mm_inputs)
        self.engine.validate_prompt(request.prompt_token_ids)
        return request

    def _run(self, futures: list[Future], use_tqdm: bool) -> tuple[dict[int, Any], dict[int, str]]:
        """Step the engine until every prompt's request is done; returns the outputs and
        the errors, by prompt index."""
        engine = self.engine
        results: dict[int, Any] = {}
        errors: dict[int, str] = {}
        index_of: dict[str, int] = {}
        pending = dict(enumerate(futures))
        bar = tqdm(total=len(futures), desc="Processed prompts", disable=not use_tqdm, dynamic_ncols=True)
        start, generated = time.perf_counter(), 0
        while pending or engine.has_unfinished():
            if pending and not engine.has_unfinished():
                wait(pending.values(), return_when=FIRST_COMPLETED)
            for i in [i for i, future in pending.items() if future.done()]:
                try:
                    request = pending.pop(i).result()
                    engine.add_request(request)
                    index_of[request.request_id] = i
                except (ValueError, FileNotFoundError) as e:
                    errors[i] = str(e)
                    bar.update(1)
            for seq in engine.step():
                request = seq.request
                generated += seq.num_output_tokens
                i = index_of.get(request.request_id)
                if request.finished and i is not None and i not in results:
                    request.metrics.finished_time = time.perf_counter()
                    results[i] = engine.request_output(request)
                    bar.update(1)
                    bar.set_postfix_str(f"{generated / (time.perf_counter() - start):.1f} tok/s")
        bar.close()
        return results, errors
