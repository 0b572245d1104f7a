"""The TF-TRT conversion cache is the shared ``runner.backends.cache`` (kept importable here)."""

from runner.backends.cache import CacheResult, ConversionCache, cache_key, source_hash

__all__ = ["CacheResult", "ConversionCache", "cache_key", "source_hash"]
