from .repository import AppConfigPolicyRepository

__all__ = ["AppConfigPolicyRepository"]
