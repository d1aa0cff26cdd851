"""The errors the library raises.

Every exception derives from :class:`AppConfigError`::

    AppConfigError
    ├── AppConfigValidationError        bad input, raised before any I/O
    │   ├── InvalidConfigNameError
    │   ├── InvalidUserIdError
    │   ├── InvalidScopeError           scope type or scope id
    │   ├── InvalidConfigError          not a bounded JSON object
    │   ├── InvalidScopeSourcesError
    │   └── TooManyItemsError           a bulk call or batch read over its bound
    ├── PolicyNotFoundError
    ├── PolicyAlreadyExistsError
    ├── PolicyInUseError                purge refused: fragments still reference it
    ├── CacheSettingsError              a cache-source setting out of range
    └── AppConfigStorageError           the database failed; the driver error is ``__cause__``

Cache failures are never raised: they become misses (see ``docs/reliability.rst``).
"""

from __future__ import annotations


class AppConfigError(Exception):
    """Base of every error the library raises."""

    #: Stable machine-readable code, also used in ``BulkFailure.code``.
    code = "error"


class AppConfigValidationError(AppConfigError):
    """Input was rejected before any I/O."""

    code = "invalid_input"


class InvalidConfigNameError(AppConfigValidationError):
    code = "invalid_name"


class InvalidUserIdError(AppConfigValidationError):
    code = "invalid_user_id"


class InvalidScopeError(AppConfigValidationError):
    code = "invalid_scope"


class InvalidConfigError(AppConfigValidationError):
    code = "invalid_config"


class InvalidScopeSourcesError(AppConfigValidationError):
    code = "invalid_scope_sources"


class TooManyItemsError(AppConfigValidationError):
    code = "too_many_items"


class PolicyNotFoundError(AppConfigError):
    code = "policy_not_found"


class PolicyAlreadyExistsError(AppConfigError):
    code = "already_exists"


class PolicyInUseError(AppConfigError):
    code = "policy_in_use"


class AppConfigStorageError(AppConfigError):
    """The database call failed; the driver's exception is chained as ``__cause__``."""

    code = "storage_error"


class CacheSettingsError(AppConfigError):
    """A cache-source setting is out of range (raised by the constructor)."""

    code = "invalid_cache_settings"
