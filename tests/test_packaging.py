"""The distributions ship what a released scientific package ships."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pluralstan as ps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, list[str]]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(out.glob("*.whl"))
    sdist = next(out.glob("*.tar.gz"))
    with zipfile.ZipFile(wheel) as zf, tarfile.open(sdist) as tf:
        return {"wheel": zf.namelist(), "sdist": tf.getnames(), "name": [wheel.name]}


def test_wheel_has_the_licence_types_marker_and_stan_programs(dists):
    names = dists["wheel"]
    assert dists["name"][0].startswith(f"pluralstan-{ps.__version__}-")
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "pluralstan/py.typed" in names
    assert "pluralstan/__main__.py" in names
    programs = {p.name for p in (ROOT / "stan").glob("*.stan")}
    assert programs <= {Path(n).name for n in names if n.startswith("pluralstan/stan/")}
    assert any(n.startswith("pluralstan/stan/functions/") for n in names)


def test_sdist_has_the_release_files(dists):
    top = f"pluralstan-{ps.__version__}/"
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md", "README.md", "pyproject.toml",
                 "pluralstan/py.typed"):
        assert top + name in dists["sdist"], name
