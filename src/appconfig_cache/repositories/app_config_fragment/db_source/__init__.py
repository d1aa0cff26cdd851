from .db_source import AppConfigFragmentDBSource, ItemFailure, LoadedViews, SharedPart

__all__ = ["AppConfigFragmentDBSource", "ItemFailure", "LoadedViews", "SharedPart"]
