from .db_source import AppConfigPolicyDBSource

__all__ = ["AppConfigPolicyDBSource"]
