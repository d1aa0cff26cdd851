"""Write pip constraints that pin every direct dependency to its lower bound.

The ``lowest`` tox env installs the package with these constraints, so that the
``>=`` bounds of ``install_requires`` and of the ``test`` extra in ``setup.cfg``
are tested, not just claimed. Usage::

    python .ci/lowest.py OUTPUT.txt

Every requirement must have a ``>=`` bound; one without fails the run, so a new
dependency cannot slip in untested. Transitive dependencies resolve as usual.
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"
EXTRAS = ("test",)
# name[extras] then the specifiers, e.g. "sqlalchemy[asyncio]>=2.1,<2.2"
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)(?:\[[^\]]*\])?\s*(?P<specs>.*)$")


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def lower_bounds(setup_cfg: Path = SETUP_CFG) -> dict[str, str]:
    """``{name: lower bound}`` of ``install_requires`` and the extras in ``EXTRAS``."""
    config = configparser.ConfigParser()
    config.read(setup_cfg, encoding="utf-8")
    requirements = _lines(config["options"]["install_requires"])
    for extra in EXTRAS:
        requirements += _lines(config["options.extras_require"][extra])
    bounds: dict[str, str] = {}
    for requirement in requirements:
        match = REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"lowest.py: cannot read the requirement {requirement!r}")
        name = match["name"].lower()
        lows = [s.strip()[2:] for s in match["specs"].split(",") if s.strip().startswith(">=")]
        if len(lows) != 1:
            raise SystemExit(f"lowest.py: {requirement!r} needs exactly one '>=' lower bound")
        if bounds.get(name, lows[0]) != lows[0]:
            raise SystemExit(f"lowest.py: {name} has two lower bounds in {setup_cfg.name}")
        bounds[name] = lows[0]
    return bounds


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    pins = "".join(f"{name}=={low}\n" for name, low in sorted(lower_bounds().items()))
    Path(argv[0]).write_text(pins, encoding="utf-8")
    print(f"lowest.py: {argv[0]}:\n{pins}", end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
