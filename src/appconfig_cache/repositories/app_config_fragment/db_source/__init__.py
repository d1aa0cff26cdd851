from .db_source import AppConfigFragmentDBSource, ItemFailure, LoadedViews

__all__ = ["AppConfigFragmentDBSource", "ItemFailure", "LoadedViews"]
