"""The engine: API, scheduler, block manager, model runner, sampler, loading."""
