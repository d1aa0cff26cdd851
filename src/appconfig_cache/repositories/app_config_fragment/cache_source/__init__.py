from .cache_source import AppConfigFragmentCacheSource, Loader

__all__ = ["AppConfigFragmentCacheSource", "Loader"]
