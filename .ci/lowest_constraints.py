"""Print pip constraints pinning the core numerical dependencies at their lowest allowed versions.

The bounds are read from pyproject.toml, so the lowest-versions CI job tests exactly the lower
bounds the package declares.
"""

import re
import sys
import tomllib
from pathlib import Path

CORE = ("numpy", "scipy", "pandas", "xarray")

project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
lowest = {}
for requirement in project["dependencies"]:
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", requirement)
    if match and match.group(1).lower() in CORE:
        lowest[match.group(1).lower()] = match.group(2)
missing = sorted(set(CORE) - set(lowest))
if missing:
    sys.exit(f"pyproject.toml declares no lower bound for {missing}")
print("\n".join(f"{name}=={version}" for name, version in lowest.items()))
