"""``python -m appconfig_cache``: the ``appconfig-cache`` command."""

from appconfig_cache.cli import main

raise SystemExit(main())
