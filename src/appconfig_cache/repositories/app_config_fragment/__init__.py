from .cache_source import AppConfigFragmentCacheSource
from .repository import AppConfigFragmentRepository

__all__ = ["AppConfigFragmentCacheSource", "AppConfigFragmentRepository"]
