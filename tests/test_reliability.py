"""Reliability (issue 6): bad input, interrupted writes, reproducibility, loud diagnostics.

One table enumerates the bad input the public API (``ps.fit`` for every registered model,
``ps.read_csv``, ``ps.load``, :mod:`pluralstan.realdata`) and the command line can receive. Every
row must raise :class:`~pluralstan.errors.PluralstanError` (the CLI: exit status 2 with the message
on stderr) whose text names the column, value or row at fault, before any Stan code runs and with
no Stan / C++ traceback in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pluralstan as ps
from pluralstan import _arviz, diagnostics, outputs, realdata
from pluralstan.cli import main
from pluralstan.data import data_hash
from pluralstan.engine import CmdStanEngine, PyStanEngine
from pluralstan.errors import PluralstanError
from pluralstan.models import stan_dir

#: Text that would mean a Stan / C++ / HTTP-server error reached the user.
FOREIGN = re.compile(r"Traceback \(most recent call last\)|httpstan|stanc|c\+\+|aiohttp",
                     re.IGNORECASE)
#: Modules whose exceptions must never be the cause of a user-facing error.
FOREIGN_MODULES = ("stan", "httpstan", "cmdstanpy", "aiohttp")
#: Tiny sampler settings (every table row fails before these matter).
TINY = {"chains": 2, "draws": 20, "warmup": 20}


# ---------------------------------------------------------------------- shared inputs
def base_frame() -> pd.DataFrame:
    """16 judgements: 4 annotators (ids 0-3) in groups 0 and 1, attributes x1 and x2."""
    comps = ps.simulate.mixture(np.array([[1.0, -1.0], [-1.0, 1.0]]), [0.5, 0.5], n_pairs=4,
                                n_annotators=4, seed=1)
    return comps.to_frame()


def annotator_table() -> pd.DataFrame:
    """A numeric covariate for annotators 0-3."""
    return pd.DataFrame({"annotator": [0, 1, 2, 3], "age": [21.0, 34.0, 47.0, 60.0]})


def items_frame() -> pd.DataFrame:
    """Items mode: three items a, b, c."""
    return pd.DataFrame({"item_a": ["a", "b", "a"], "item_b": ["b", "c", "c"], "y": [1, 0, 1]})


def item_table() -> pd.DataFrame:
    return pd.DataFrame({"item": ["a", "b", "c"], "f": [0.1, 0.5, 0.9]})


def with_value(column: str, row: int, value: Any) -> pd.DataFrame:
    """The base frame with one cell replaced (object dtype so any value fits)."""
    frame = base_frame()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


def fit(model: str, frame: pd.DataFrame | Any, **kwargs: Any) -> Callable[[Path], Any]:
    """A table row calling ``ps.fit`` on ``frame`` (a DataFrame, Comparisons or anything)."""
    return lambda _tmp: ps.fit(model, frame, **{**TINY, **kwargs})


def fit_with(model: str, frame: pd.DataFrame, *, annotators=None, items=None, **kwargs: Any):
    """A table row validating with side tables, then fitting."""

    def call(_tmp: Path) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ps.IdentificationWarning)
            comps = ps.Comparisons.from_frame(frame, annotators=annotators, items=items)
        return ps.fit(model, comps, **{**TINY, **kwargs})

    return call


def file_with(
    name: str, content: bytes | str | pd.DataFrame | xr.Dataset
) -> Callable[[Path], Path]:
    """Write ``content`` to ``tmp/name`` and return the path."""

    def make(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, pd.DataFrame):
            content.to_csv(path, index=False)
        elif isinstance(content, xr.Dataset):
            content.to_netcdf(path, engine="h5netcdf")
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return make


BINARY = bytes(range(256)) * 8
NOT_IDATA = xr.Dataset({"a": ("x", [1.0, 2.0])})


def read(make: Callable[[Path], Path]) -> Callable[[Path], Any]:
    return lambda tmp: ps.read_csv(make(tmp))


def load(make: Callable[[Path], Path]) -> Callable[[Path], Any]:
    return lambda tmp: ps.load(make(tmp))


def data_folder(files: dict[str, bytes | str]) -> Callable[[Path], Path]:
    """A stand-in for the real data folder holding ``files``."""

    def make(tmp: Path) -> Path:
        folder = tmp / "data"
        folder.mkdir()
        for name, content in files.items():
            file_with(name, content)(folder)
        return folder

    return make


CEMS_PEOPLE = "annotator_id,work\n1,yes\n2,no\n"


def cli(*argv: str, files: dict[str, Any] | None = None) -> Callable[[Path], list[str]]:
    """A table row running the CLI; ``{name}`` in argv is replaced by ``tmp/name``."""

    def make(tmp: Path) -> list[str]:
        for name, content in (files or {}).items():
            file_with(name, content)(tmp)
        return [arg.format(tmp=tmp) for arg in argv]

    return make



def row(surface: str, make: Callable, message: str, id: str, *marks) -> Any:
    return pytest.param(surface, make, message, id=id, marks=marks)


def _rename(**names: str) -> pd.DataFrame:
    return base_frame().rename(columns=names)


def _group_outside() -> pd.DataFrame:
    frame = base_frame()
    frame["group"] = frame["group"].replace({1: 5})
    return frame


def _mixed_groups() -> pd.DataFrame:
    frame = base_frame()
    frame["group"] = frame["group"].astype(object).where(frame["group"] == 0, "b")
    return frame


def _ann(**changes: Any) -> pd.DataFrame:
    return annotator_table().assign(**changes)


def _items(**changes: Any) -> pd.DataFrame:
    return items_frame().assign(**changes)


MIXTURES_WITH_K = ("unlabeled", "annotator", "covariate", "pal")


def _for_mixture(model: str, **kwargs: Any) -> Callable[[Path], Any]:
    """A fit row for a K-mixture (the covariate model gets its annotator table)."""
    if model == "covariate":
        return fit_with(model, base_frame(), annotators=annotator_table(), **kwargs)
    return fit(model, base_frame(), **kwargs)


CASES = [
    # --- missing or misspelled columns
    row("api", fit("aggregate", base_frame().drop(columns="y")),
        r"missing outcome column 'y' .*columns present: \[", "no-outcome-column"),
    row("api", fit("aggregate", _rename(y="Y")),
        r"missing outcome column 'y'.*'Y'|'Y' .*did you mean 'y'", "misspelled-outcome-column"),
    row("api", fit("aggregate", _rename(b_x2="b_X2")),
        r"a_x2 has no matching b_x2.*b_X2 has no matching a_X2", "misspelled-attribute-column"),
    row("api", fit("aggregate", base_frame()[["y", "annotator"]]),
        r"no option columns: give either 'item_a' and 'item_b'.*'a_<name>'", "no-option-columns"),
    row("api", fit("aggregate", items_frame().drop(columns="item_b")),
        r"'item_b' is missing", "item-b-missing"),
    row("api", fit("aggregate", items_frame().assign(a_x=1.0, b_x=0.0)),
        r"both item columns .* and attribute columns .*'a_x'", "items-and-attributes"),
    row("api", fit("labeled", base_frame().drop(columns="group")),
        r"labeled model needs the subgroup label column 'group'", "labeled-without-group"),
    row("api", fit("annotator", _rename(annotator="annotater"), K=2),
        r"'annotater'.*'annotator'", "misspelled-annotator-column"),
    row("api", fit("aggregate", pd.concat([base_frame(), base_frame()[["y"]]], axis=1)),
        r"column 'y' .*more than once", "duplicate-column"),
    # --- outcomes outside the allowed set
    row("api", fit("aggregate", with_value("y", 3, 2)),
        r"'y' has value 2(\.0)? at row 3; accepted: 1 .*0 .*0\.5", "outcome-2"),
    row("api", fit("labeled", with_value("y", 0, -1)),
        r"'y' has value -1(\.0)? at row 0; accepted", "outcome-minus-1"),
    row("api", fit("aggregate", with_value("y", 5, "yes")),
        r"'y' has a non-numeric value 'yes' at row 5", "outcome-text"),
    row("api", fit("aggregate", with_value("y", 2, np.nan)),
        r"'y' has a missing or infinite value at row 2", "outcome-nan"),
    row("api", fit("pal", with_value("y", 1, 0.5), K=2),
        r"'y' has ties \(0\.5\) at rows .*1.*accepted: 1 a preferred, 0 b preferred", "pal-tie"),
    row("api", fit("aggregate", with_value("y", 1, 0.5), ties=False),
        r"'y' contains ties \(0\.5\) but ties=False", "ties-false-with-ties"),
    row("api", fit("aggregate", base_frame().assign(order=2)),
        r"'order' has value 2(\.0)? at rows 0, .*accepted: 1 .*0 ", "order-2"),
    # --- NaN / inf / non-numeric features, mismatched feature sets
    row("api", fit("aggregate", with_value("a_x1", 4, np.nan)),
        r"'a_x1' has a missing or infinite value at row 4", "feature-nan"),
    row("api", fit("labeled", with_value("b_x2", 7, np.inf)),
        r"'b_x2' has a missing or infinite value at row 7", "feature-inf"),
    row("api", fit("aggregate", with_value("a_x1", 2, "high")),
        r"'a_x1' has a non-numeric value 'high' at row 2", "feature-text"),
    row("api", fit("aggregate", base_frame().assign(a_x3=1.0)),
        r"different feature sets: a_x3 has no matching b_x3", "feature-sets-differ"),
    row("api", fit_with("aggregate", items_frame(), items=item_table().assign(f=[0.1, np.nan, 1])),
        r"item feature column 'f' has a missing or infinite value at row 1", "item-feature-nan"),
    row("api", fit_with("aggregate", items_frame(), items=item_table()[["item"]]),
        r"item table has no feature columns", "item-table-without-features"),
    # --- duplicate or unknown ids
    row("api", fit_with("covariate", base_frame(), annotators=pd.concat(
        [annotator_table(), annotator_table().iloc[:1]]), K=2),
        r"annotator table lists annotator 0 more than once", "duplicate-annotator-id"),
    row("api", fit_with("aggregate", items_frame(), items=pd.concat(
        [item_table(), item_table().iloc[:1]])),
        r"item table lists item 'a' more than once", "duplicate-item-id"),
    row("api", fit_with("covariate", base_frame(), annotators=annotator_table().iloc[:3], K=2),
        r"annotator 3 has judgements but no row in the annotator table", "unknown-annotator-id"),
    row("api", fit_with("aggregate", items_frame(), items=item_table().iloc[:2]),
        r"item 'c' appears in the comparisons but not in the item table", "unknown-item-id"),
    row("api", lambda _t: ps.Comparisons.from_frame(items_frame(), reference="z"),
        r"reference item 'z' does not appear in item_a or item_b", "unknown-reference-item"),
    row("api", fit("annotator", with_value("annotator", 0, None), K=2),
        r"'annotator' has a missing id at row 0", "missing-annotator-id"),
    row("api", fit("aggregate", _items(item_b=["b", "b", "c"])),
        r"item 'b' is compared with itself at row 1", "item-compared-with-itself"),
    row("api", fit("labeled", base_frame().assign(group=np.arange(16) % 2)),
        r"annotator 0 carries 2 different labels \[0, 1\] in column 'group'",
        "annotator-with-two-labels"),
    # --- unknown group labels
    row("api", fit("labeled", _group_outside(), K=2),
        r"column 'group' has integer label 5, outside 0\.\.1 for K=2", "group-label-outside-K"),
    row("api", fit("labeled", base_frame(), K=3),
        r"K=3 but column 'group' has 2 label level\(s\) \[0, 1\]", "K-differs-from-labels"),
    row("api", fit("labeled", with_value("group", 3, None)),
        r"'group' has a missing id at row 3", "missing-group-label"),
    row("api", fit("labeled", _mixed_groups()),
        r"column 'group' mixes label types", "mixed-type-group-labels"),
    # --- K missing, K < 1, K above the number of annotators, K not an integer
    *[row("api", _for_mixture(m), rf"model '{m}' needs the number of components K",
          f"{m}-K-missing") for m in MIXTURES_WITH_K],
    *[row("api", _for_mixture(m, K=0), r"K.* must be at least 1, got 0", f"{m}-K-0")
      for m in MIXTURES_WITH_K],
    *[row("api", _for_mixture(m, K=5), r"K = 5 .*4 annotator\(s\)", f"{m}-K-above-annotators")
      for m in ("annotator", "covariate", "pal")],
    *[row("api", _for_mixture(m, K=1.5), r"K .*must be a positive integer.*got 1\.5|"
          r"K .*must be an integer, got 1\.5", f"{m}-K-1.5") for m in MIXTURES_WITH_K],
    # --- empty tables, wrong types
    row("api", fit("aggregate", base_frame().iloc[:0]),
        r"comparison table is empty", "empty-table"),
    row("api", fit("annotator", pd.DataFrame(), K=2),
        r"comparison table is empty", "empty-frame-no-columns"),
    row("api", fit("aggregate", [[1, 0.2, 0.1]]),
        r"comparisons must be a pluralstan Comparisons or a pandas DataFrame, got list",
        "comparisons-not-a-frame"),
    row("api", fit_with("covariate", base_frame(), annotators=[[0, 21.0]], K=2),
        r"annotator table must be a pandas DataFrame, got list", "annotator-table-not-a-frame"),
    row("api", fit_with("aggregate", items_frame(), items=[["a", 0.1]]),
        r"item table must be a pandas DataFrame, got list", "item-table-not-a-frame"),
    # --- annotators and their covariates
    row("api", fit_with("covariate", base_frame(), annotators=pd.concat(
        [annotator_table(), pd.DataFrame({"annotator": [9], "age": [30.0]})]), K=2),
        r"annotator 9 is in the annotator table but has no judgements",
        "annotator-without-judgements"),
    row("api", fit_with("covariate", base_frame(), annotators=_ann(age=[21, np.nan, 40, 50]),
                        K=2),
        r"annotator covariate 'age' is missing for annotator 1", "covariate-missing-value"),
    row("api", fit_with("covariate", base_frame(), annotators=_ann(age=30.0), K=2),
        r"annotator covariate 'age' is constant", "covariate-constant"),
    row("api", fit("covariate", base_frame(), K=2),
        r"covariate model needs an annotator covariate table", "covariate-without-table"),
    # --- model names, options, priors and sampler settings
    row("api", fit("nope", base_frame()),
        r"unknown model 'nope'; known models: \[.*'aggregate'", "unknown-model"),
    row("api", fit("aggregate", base_frame(), priors={"thetasd": 1.0}),
        r"unknown prior hyperparameter 'thetasd'; this model accepts \[.*'theta_sd'",
        "unknown-prior"),
    row("api", fit("annotator", base_frame(), K=2, priors={"theta_sd": -1.0}),
        r"prior 'theta_sd' must be finite and positive, got \[?-1\.0", "negative-prior-sd"),
    row("api", fit("aggregate", base_frame(), priors={"theta_sd": "wide"}),
        r"prior 'theta_sd' .*'wide'", "non-numeric-prior"),
    row("api", fit("aggregate", base_frame(), tie=True),
        r"unknown option 'tie'.*'ties'", "unknown-model-option"),
    row("api", fit("unlabeled", base_frame(), K=2, identify="sorted"),
        r"unknown identify 'sorted'; accepted: \['none', 'ordered'\]", "unknown-identify"),
    row("api", fit("aggregate", base_frame(), chains=0),
        r"chains must be a positive integer, got 0", "chains-0"),
    row("api", fit("aggregate", base_frame(), adapt_delta=1.5),
        r"adapt_delta must lie in \(0, 1\), got 1\.5", "adapt-delta-1.5"),
    row("api", fit("aggregate", base_frame(), seed=-1),
        r"seed must be an integer in \[0, 2\*\*31\), got -1", "seed-negative"),
    row("api", fit("aggregate", base_frame(), draws="ten"),
        r"draws must be a positive integer, got 'ten'", "draws-not-a-number"),
    row("api", fit("aggregate", base_frame(), backend="nope"),
        r"unknown backend 'nope'.*accepted: 'auto', 'pystan', 'cmdstanpy'", "unknown-backend"),
    # --- files: ps.read_csv
    row("api", lambda tmp: ps.read_csv(tmp / "missing.csv"),
        r"comparison table file '.*missing\.csv' does not exist", "read-csv-missing-file"),
    row("api", read(file_with("bin.csv", BINARY)),
        r"file '.*bin\.csv' is not a readable CSV file", "read-csv-binary-file"),
    row("api", read(file_with("one.csv", "hello\nworld\n")),
        r"file '.*one\.csv' parsed to 1 column\(s\)", "read-csv-one-column"),
    row("api", read(file_with("empty.csv", "")),
        r"file '.*empty\.csv' is not a readable CSV file", "read-csv-empty-file"),
    row("api", read(file_with("header.csv", base_frame().iloc[:0])),
        r"comparison table is empty", "read-csv-header-only"),
    row("api", read(file_with("ragged.csv", "y,a_x,b_x\n1,2,3\n1,2,3,4,5\n")),
        r"file '.*ragged\.csv' is not a readable CSV file.*line 3", "read-csv-ragged"),
    row("api", lambda tmp: ps.read_csv(file_with("c.csv", base_frame())(tmp),
                                       annotators=tmp / "nope.csv"),
        r"annotator table file '.*nope\.csv' does not exist", "read-csv-missing-annotator-file"),
    # --- files: ps.load
    row("api", lambda tmp: ps.load(tmp / "missing.nc"),
        r"file '.*missing\.nc' does not exist", "load-missing-file"),
    row("api", load(file_with("text.nc", "not netcdf")),
        r"'.*text\.nc' is not an InferenceData NetCDF file", "load-text-file"),
    row("api", load(file_with("plain.nc", NOT_IDATA)),
        r"'.*plain\.nc' is a NetCDF file but holds no 'posterior' group", "load-not-idata"),
    # --- files: the real-data loaders
    row("api", lambda tmp: realdata.load_cems(tmp / "nowhere"),
        r"data folder '.*nowhere' does not exist; .*PLURALSTAN_DATA", "realdata-missing-folder"),
    row("api", lambda tmp: realdata.load_cems(data_folder({})(tmp)),
        r"data file '.*cems_choice_comparisons\.csv' does not exist", "realdata-missing-file"),
    row("api", lambda tmp: realdata.load_cems(data_folder(
        {"cems_choice_comparisons.csv": "annotator_id,item_a,item_b,y\n1,A,B,1\n",
         "cems_choice_annotators.csv": CEMS_PEOPLE})(tmp), group="nope"),
        r"cems_choice_annotators\.csv has no column 'nope'", "realdata-unknown-group-column"),
    row("api", lambda tmp: realdata.load_cems(data_folder(
        {"cems_choice_comparisons.csv": "annotator_id,item_a,item_b,y\n1,A,B,2\n",
         "cems_choice_annotators.csv": CEMS_PEOPLE})(tmp)),
        r"column 'y' has value 2 at row 0", "realdata-outcome-outside"),
    row("api", lambda tmp: realdata.load_cems(data_folder(
        {"cems_choice_comparisons.csv": BINARY,
         "cems_choice_annotators.csv": CEMS_PEOPLE})(tmp)),
        r"cems_choice_comparisons\.csv' is not a readable CSV file", "realdata-not-csv"),
    row("api", lambda tmp: realdata.load_cems(data_folder(
        {"cems_choice_comparisons.csv": "annotator_id,item_a,y\n1,A,1\n",
         "cems_choice_annotators.csv": CEMS_PEOPLE})(tmp)),
        r"cems_choice_comparisons\.csv.* column 'item_b'", "realdata-missing-column"),
    # --- the command line
    row("cli", cli("fit", "aggregate", "{tmp}/missing.csv", "--out", "{tmp}/o.nc"),
        r"comparison table file '.*missing\.csv' does not exist", "cli-fit-missing-file"),
    row("cli", cli("fit", "aggregate", "{tmp}/bin.csv", "--out", "{tmp}/o.nc",
                   files={"bin.csv": BINARY}),
        r"'.*bin\.csv' is not a readable CSV file", "cli-fit-binary-file"),
    row("cli", cli("fit", "aggregate", "{tmp}/c.csv", "--out", "{tmp}/o.nc",
                   files={"c.csv": with_value("y", 3, 2)}),
        r"'y' has value 2(\.0)? at row 3; accepted", "cli-fit-outcome-2"),
    row("cli", cli("fit", "aggregate", "{tmp}/c.csv", "--out", "{tmp}/o.nc",
                   files={"c.csv": with_value("a_x1", 4, np.nan)}),
        r"'a_x1' has a missing or infinite value at row 4", "cli-fit-feature-nan"),
    row("cli", cli("fit", "unlabeled", "{tmp}/c.csv", "--out", "{tmp}/o.nc",
                   files={"c.csv": base_frame()}),
        r"model 'unlabeled' needs the number of components K", "cli-fit-K-missing"),
    row("cli", cli("fit", "annotator", "{tmp}/c.csv", "--K", "0", "--out", "{tmp}/o.nc",
                   files={"c.csv": base_frame()}),
        r"K .* must be at least 1, got 0", "cli-fit-K-0"),
    row("cli", cli("fit", "pal", "{tmp}/c.csv", "--K", "9", "--out", "{tmp}/o.nc",
                   files={"c.csv": base_frame()}),
        r"K = 9 .*4 annotator\(s\)", "cli-fit-K-above-annotators"),
    row("cli", cli("fit", "nope", "{tmp}/c.csv", "--out", "{tmp}/o.nc",
                   files={"c.csv": base_frame()}),
        r"unknown model 'nope'", "cli-fit-unknown-model"),
    row("cli", cli("fit", "aggregate", "{tmp}/c.csv", "--prior", "theta_sd", "--out",
                   "{tmp}/o.nc", files={"c.csv": base_frame()}),
        r"--prior expects KEY=VALUE .*got 'theta_sd'", "cli-fit-prior-syntax"),
    row("cli", cli("fit", "aggregate", "{tmp}/c.csv", "--prior", "thetasd=1", "--out",
                   "{tmp}/o.nc", files={"c.csv": base_frame()}),
        r"unknown prior hyperparameter 'thetasd'", "cli-fit-unknown-prior"),
    row("cli", cli("fit", "covariate", "{tmp}/c.csv", "--K", "2", "--annotators", "{tmp}/a.csv",
                   "--out", "{tmp}/o.nc",
                   files={"c.csv": base_frame(), "a.csv": _ann(age=[21, np.nan, 40, 50])}),
        r"annotator covariate 'age' is missing for annotator 1", "cli-fit-covariate-missing"),
    row("cli", cli("fit", "covariate", "{tmp}/c.csv", "--K", "2", "--annotators",
                   "{tmp}/none.csv", "--out", "{tmp}/o.nc", files={"c.csv": base_frame()}),
        r"annotator table file '.*none\.csv' does not exist", "cli-fit-missing-annotator-file"),
    row("cli", cli("fit", "annotator", "{tmp}/c.csv", "--K", "2", "--out", "{tmp}/o.nc",
                   files={"c.csv": _rename(annotator="annotater")}),
        r"'annotater'.*'annotator'", "cli-fit-misspelled-annotator-column"),
    row("cli", cli("summary", "{tmp}/missing.nc"),
        r"file '.*missing\.nc' does not exist", "cli-summary-missing-file"),
    row("cli", cli("summary", "{tmp}/c.csv", files={"c.csv": base_frame()}),
        r"'.*c\.csv' is not an InferenceData NetCDF file", "cli-summary-csv-file"),
    row("cli", cli("summary", "{tmp}/plain.nc", files={"plain.nc": NOT_IDATA}),
        r"'.*plain\.nc' is a NetCDF file but holds no 'posterior' group", "cli-summary-not-idata"),
    row("cli", cli("disclose", "{tmp}/c.csv", "{tmp}/plain.nc", "{tmp}/plain.nc", "--out",
                   "{tmp}/report", files={"c.csv": base_frame(), "plain.nc": NOT_IDATA}),
        r"holds no 'posterior' group", "cli-disclose-not-idata"),
    row("cli", cli("simulate", "bt", "--pairs", "0", "--out", "{tmp}/s.csv"),
        r"n_pairs and judgements_per_pair must be at least 1", "cli-simulate-pairs-0"),
    row("cli", cli("simulate", "bt", "--theta", "1,high", "--out", "{tmp}/s.csv"),
        r"--theta .*'1,high'", "cli-simulate-theta-not-numbers"),
]


@pytest.fixture()
def stan_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to run Stan with either engine."""
    calls: list[str] = []

    def refuse(self, program, data, config):
        calls.append(program.name)
        raise RuntimeError(f"Stan was called for {program.name} on input that must be refused")

    monkeypatch.setattr(PyStanEngine, "sample", refuse)
    monkeypatch.setattr(CmdStanEngine, "sample", refuse)
    return calls


def _assert_not_foreign(err: BaseException) -> None:
    """No Stan / C++ / server exception in the chain, and no traceback text in the message."""
    seen: BaseException | None = err
    while seen is not None:
        module = type(seen).__module__.split(".")[0]
        assert module not in FOREIGN_MODULES, f"a {type(seen).__module__} error leaked: {seen}"
        seen = seen.__cause__ or seen.__context__
    assert not FOREIGN.search(str(err)), str(err)


@pytest.mark.parametrize(("surface", "make", "message"), CASES)
def test_bad_input_is_refused_by_name_before_stan_runs(
    surface: str, make: Callable, message: str, tmp_path: Path, stan_calls: list[str],
    capsys: pytest.CaptureFixture,
) -> None:
    """Each row: the project's own error, naming what is wrong, and no Stan code ran."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.IdentificationWarning)
        if surface == "cli":
            rc = main(make(tmp_path))
            err = capsys.readouterr().err
            assert rc == 2
            assert err.startswith("pluralstan: error: "), err
            assert re.search(message, err), err
            assert not FOREIGN.search(err), err
            assert not (tmp_path / "o.nc").exists()
        else:
            with pytest.raises(PluralstanError, match=message) as info:
                make(tmp_path)
            _assert_not_foreign(info.value)
    assert stan_calls == []


def test_the_table_covers_every_registered_model() -> None:
    """A newly registered model must get its own rows in the bad-input table."""
    fitted = set()
    for case in CASES:
        for cell in getattr(case.values[1], "__closure__", None) or ():
            if isinstance(cell.cell_contents, str) and cell.cell_contents in ps.models:
                fitted.add(cell.cell_contents)
    assert fitted == set(ps.models)


# ---------------------------------------------------------------------- faults
def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_interrupted_fit_leaves_no_output_file(tmp_path: Path, monkeypatch, capsys) -> None:
    """Ctrl-C while sampling: ``pluralstan fit`` reports it, exits 130 and writes nothing."""

    def interrupt(self, program, data, config):
        raise KeyboardInterrupt

    monkeypatch.setattr(PyStanEngine, "sample", interrupt)
    monkeypatch.setattr(CmdStanEngine, "sample", interrupt)
    csv = tmp_path / "in" / "comps.csv"
    csv.parent.mkdir()
    base_frame().to_csv(csv, index=False)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["fit", "aggregate", str(csv), "--out", str(out / "fit.nc")]) == 130
    assert "pluralstan: interrupted" in capsys.readouterr().err.splitlines()
    assert _files(out) == []
    assert _files(csv.parent) == ["comps.csv"]


def _tiny_idata() -> _arviz.Idata:
    rng = np.random.default_rng(0)
    return _arviz.from_dict({"posterior": {"theta": rng.normal(size=(2, 50, 3))}})


def _half_writer(exc: BaseException):
    """A to_netcdf that writes half a real NetCDF file, then fails with ``exc``."""
    real = _arviz.Idata.to_netcdf

    def half(self, filename, *args, **kwargs):
        real(self, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise exc

    return half


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "overwrite"])
def test_save_is_whole_or_nothing(tmp_path: Path, monkeypatch, exc, existing) -> None:
    """A save that fails half-way leaves no file (or the previous one intact), no temp file."""
    target = tmp_path / "fit.nc"
    if existing:
        ps.save(_tiny_idata(), target)
    before = target.read_bytes() if existing else None
    monkeypatch.setattr(_arviz.Idata, "to_netcdf", _half_writer(exc))
    with pytest.raises(type(exc)):
        ps.save(_tiny_idata(), target)
    assert _files(tmp_path) == (["fit.nc"] if existing else [])
    if existing:
        assert target.read_bytes() == before
        monkeypatch.undo()
        assert ps.load(target).posterior["theta"].shape == (2, 50, 3)
    else:
        with pytest.raises(PluralstanError, match="does not exist"):
            ps.load(target)


class _HalfHandle:
    """A file handle that writes half of what it is given, then fails."""

    def __init__(self, handle, exc: BaseException) -> None:
        self._handle, self._exc = handle, exc

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()

    def write(self, data):
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        raise self._exc


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()],
                         ids=["error", "ctrl-c"])
def test_outputs_write_table_is_whole_or_nothing(tmp_path: Path, monkeypatch, exc) -> None:
    """A table rewrite that fails half-way keeps the previous files whole and leaves no temp."""
    old = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]})
    outputs.write_table(old, tmp_path, "t")
    before = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfHandle(real_fdopen(fd, *a, **k),
                                                                        exc))
    with pytest.raises(type(exc)):
        outputs.write_table(pd.DataFrame({"a": range(100)}), tmp_path, "t")
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == before
    with pytest.raises(type(exc)):
        outputs.write_table(old, tmp_path / "new", "t")
    assert _files(tmp_path / "new") == []


def test_cli_simulate_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: _HalfHandle(real_fdopen(fd, *a, **k),
                                                                        OSError("disk full")))
    with pytest.raises(OSError):
        main(["simulate", "bt", "--pairs", "3", "--annotators", "2", "--out",
              str(tmp_path / "s.csv")])
    assert _files(tmp_path) == []


# ---------------------------------------------------------------------- reproducibility
def _quiet_fit(*args: Any, **kwargs: Any) -> _arviz.Idata:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        warnings.simplefilter("ignore", ps.IdentificationWarning)
        return ps.fit(*args, **kwargs)


def _mixture_comps(seed: int = 2) -> ps.Comparisons:
    """Two groups, 12 annotators x 8 pairs, 2 attributes."""
    return ps.simulate.mixture(np.array([[1.5, -1.0], [-1.0, 1.5]]), [0.5, 0.5], n_pairs=8,
                               n_annotators=12, seed=seed)


def test_same_data_seed_and_engine_give_bit_identical_mixture_draws() -> None:
    """Annotator-level K = 2 mixture, run twice with seed 7 and once with seed 8."""
    comps = _mixture_comps()
    settings = {"K": 2, "chains": 2, "draws": 100, "warmup": 100}
    first = _quiet_fit("annotator", comps, seed=7, **settings)
    again = _quiet_fit("annotator", comps, seed=7, **settings)
    other = _quiet_fit("annotator", comps, seed=8, **settings)
    for group in ("posterior", "posterior_predictive", "log_likelihood", "sample_stats"):
        for name, da in first[group].data_vars.items():
            np.testing.assert_array_equal(da.values, again[group][name].values,
                                          err_msg=f"{group}.{name}")
    assert not np.array_equal(first.posterior["theta"].values, other.posterior["theta"].values)


def _provenance_input(model: str) -> ps.Comparisons:
    comps = _mixture_comps()
    if model == "covariate":
        people = pd.DataFrame({"annotator": list(comps.annotator_levels),
                               "age": np.linspace(20.0, 70.0, len(comps.annotator_levels))})
        return ps.Comparisons.from_frame(comps.frame, annotators=people)
    return comps


@pytest.mark.parametrize("model", sorted(ps.models))
def test_every_model_records_provenance_in_every_group_and_on_disk(model: str,
                                                                   tmp_path: Path) -> None:
    """Package version, engine and version, program hash, seed and data hash survive save/load."""
    comps = _provenance_input(model)
    spec = ps.models[model]
    K = 2 if spec.needs_K else None
    idata = _quiet_fit(model, comps, K=K, seed=5, chains=2, draws=20, warmup=20)
    # the hash of the text that was compiled: the program file with its #include lines
    # replaced by the included files
    source = (stan_dir() / spec.program_file).read_text()
    for match in re.finditer(r"^\s*#include\s+(\S+)\s*$", source, flags=re.MULTILINE):
        source = source.replace(match.group(0), (stan_dir() / match.group(1)).read_text()
                                .rstrip("\n"))
    program_sha = hashlib.sha256(source.encode()).hexdigest()
    loaded = ps.load(ps.save(idata, tmp_path / "fit.nc"))
    for group in _arviz.groups(loaded):
        attrs = loaded[group].attrs
        assert attrs["pluralstan_version"] == ps.__version__, group
        assert attrs["engine"] in ("pystan", "cmdstanpy"), group
        assert attrs["engine"] in attrs["engine_version"], group
        assert attrs["stan_program_sha256"] == program_sha, group
        assert int(attrs["seed"]) == 5, group
        assert attrs["data_sha256"] == data_hash(comps), group
        assert re.fullmatch(r"[0-9a-f]{64}", attrs["data_sha256"]), group


def test_data_hash_changes_when_one_judgement_changes() -> None:
    """Flipping one outcome changes the hash a fit records (``data_sha256 == data_hash(comps)``
    is asserted on real fits of every model above); restoring it gives the hash back."""
    comps = _mixture_comps()
    frame = comps.to_frame()
    frame.loc[7, "y"] = 1.0 - frame.loc[7, "y"]
    flipped = ps.Comparisons.from_frame(frame)
    assert data_hash(flipped) != data_hash(comps)
    frame.loc[7, "y"] = 1.0 - frame.loc[7, "y"]
    assert data_hash(ps.Comparisons.from_frame(frame)) == data_hash(comps)
    people = pd.DataFrame({"annotator": list(comps.annotator_levels), "age": np.arange(12.0)})
    older = people.assign(age=people["age"].where(people.index != 3, 99.0))
    assert data_hash(ps.Comparisons.from_frame(comps.frame, annotators=people)) != data_hash(
        ps.Comparisons.from_frame(comps.frame, annotators=older))


# ---------------------------------------------------------------------- diagnostics
def test_unlabeled_non_identification_is_flagged_and_explained(tmp_path: Path) -> None:
    """Aggregate-only high-conflict data (one judgement per anonymous annotator), K = 2.

    The mixture is not identified from such data (Proposition 1): that is the finding, not a
    sampler failure. Criterion: the fit (relabelled by default, long enough for its checks)
    records a note that says the comparison-level mixture is not identified and why, the
    printed summary shows it, it survives save / load, and no problem or DiagnosticWarning
    blames the sampler. The note describes the posterior: every relabelled theta coordinate
    keeps more than half of its prior sd (2.5), while the population preference theta_bar,
    which aggregate data do identify, is narrower than any theta coordinate.
    """
    hc = ps.simulate.high_conflict(n_pairs=100, n_annotators=100, pairs_per_annotator=1, seed=4)
    comps = ps.Comparisons.from_frame(hc.to_frame().drop(columns=["group", "annotator"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ps.DiagnosticWarning)
        idata = ps.fit("unlabeled", comps, K=2, chains=4, draws=1000, warmup=500, seed=3)
    assert idata.posterior.attrs["group_labels"] == "latent"
    assert "relabelling" in idata.posterior.attrs
    flagged = [n for n in diagnostics.notes(idata) if "not identified" in n]
    assert len(flagged) == 1, diagnostics.notes(idata)
    assert "Proposition 1" in flagged[0] and "not a sampler failure" in flagged[0]
    assert diagnostics.failed(idata) == []
    assert not [w for w in caught if issubclass(w.category, ps.DiagnosticWarning)]
    assert flagged[0] in diagnostics.summary(idata)
    post = idata.posterior
    theta_sd = post["theta"].std(("chain", "draw")).values
    assert (theta_sd > 0.5 * 2.5).all(), theta_sd
    assert (post["theta_bar"].std(("chain", "draw")).values < theta_sd.min()).all()
    loaded = ps.load(ps.save(idata, tmp_path / "fit.nc"))
    assert diagnostics.notes(loaded) == diagnostics.notes(idata)


def test_a_short_run_flags_low_ess_naming_the_parameter() -> None:
    """30 draws per chain cannot reach ESS 400: the check says so and names the coordinate."""
    comps = ps.simulate.bt([1.0, -0.5], n_pairs=20, judgements_per_pair=5, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ps.DiagnosticWarning)
        idata = ps.fit("aggregate", comps, chains=2, draws=30, warmup=100, seed=3)
    problems = diagnostics.failed(idata)
    low = [p for p in problems if re.match(r"(bulk|tail) ESS \d+ < 400 for ", p)]
    assert low, problems
    for problem in low:
        name = re.search(r"for (\w+)\[", problem).group(1)
        assert name in idata.posterior.data_vars, problem
    stored = json.loads(idata.posterior.attrs["diagnostics"])
    assert stored["min_ess_bulk"] < 400 and stored["problems"] == problems
    warned = [str(w.message) for w in caught if issubclass(w.category, ps.DiagnosticWarning)]
    assert all(any(p in m for m in warned) for p in low), warned
    assert diagnostics.flag(idata).startswith("[diagnostics failed: ")
