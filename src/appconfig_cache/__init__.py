"""appconfig-cache: a per-process TTL LRU in front of Valkey in front of PostgreSQL.

The public API is what ``__all__`` lists; everything else is private.
"""

from .errors import (
    AppConfigError,
    AppConfigStorageError,
    AppConfigValidationError,
    CacheSettingsError,
    InvalidConfigError,
    InvalidConfigNameError,
    InvalidScopeError,
    InvalidScopeSourcesError,
    InvalidUserIdError,
    PolicyAlreadyExistsError,
    PolicyInUseError,
    PolicyNotFoundError,
    TooManyItemsError,
)
from .models import create_schema
from .repositories.app_config_fragment import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
)
from .repositories.app_config_policy import AppConfigPolicyRepository
from .repositories.utils import suppress_with_log
from .tiered.stats import CacheStats
from .types import (
    AppConfigData,
    AppConfigFragmentData,
    AppConfigFragmentKey,
    AppConfigPolicyData,
    AppConfigScopeType,
    BulkFailure,
    BulkResult,
    FragmentInput,
    MyFragmentInput,
)
from .valkey_client import make_valkey_client

__version__ = "0.1.0"

__all__ = [
    "AppConfigData",
    "AppConfigError",
    "AppConfigFragmentCacheSource",
    "AppConfigFragmentData",
    "AppConfigFragmentKey",
    "AppConfigFragmentRepository",
    "AppConfigPolicyData",
    "AppConfigPolicyRepository",
    "AppConfigScopeType",
    "AppConfigStorageError",
    "AppConfigValidationError",
    "BulkFailure",
    "BulkResult",
    "CacheSettingsError",
    "CacheStats",
    "FragmentInput",
    "InvalidConfigError",
    "InvalidConfigNameError",
    "InvalidScopeError",
    "InvalidScopeSourcesError",
    "InvalidUserIdError",
    "MyFragmentInput",
    "PolicyAlreadyExistsError",
    "PolicyInUseError",
    "PolicyNotFoundError",
    "TooManyItemsError",
    "__version__",
    "create_schema",
    "make_valkey_client",
    "suppress_with_log",
]
