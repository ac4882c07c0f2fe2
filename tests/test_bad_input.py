"""Bad input that used to reach Stan, crash late or pass silently (issue 23).

Each case feeds the input and asserts the message (naming the prior, column or value) or the
behaviour. Only the CLI save tests and the summary round trip run Stan (small aggregate and
annotator fits).
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pluralstan as ps
from pluralstan import files
from pluralstan.cli import main
from pluralstan.data import Comparisons
from pluralstan.engine import BACKEND_ENV, CmdStanEngine, PyStanEngine, get_engine
from pluralstan.errors import IdentificationWarning, PluralstanError, ScaleWarning
from pluralstan.models import get_model

fit_module = importlib.import_module("pluralstan.fit")


def mixture_frame() -> pd.DataFrame:
    """16 judgements of 4 annotators (ids 0-3), attributes x1 and x2."""
    comps = ps.simulate.mixture(np.array([[1.0, -1.0], [-1.0, 1.0]]), [0.5, 0.5], n_pairs=4,
                                n_annotators=4, seed=1)
    return comps.to_frame()


def mixture_comps() -> Comparisons:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdentificationWarning)
        return Comparisons.from_frame(mixture_frame())


@pytest.fixture()
def no_stan(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to sample with either engine."""
    calls: list[str] = []

    def refuse(self, program, data, config):
        calls.append(program.name)
        raise RuntimeError("Stan was called on input that must be refused")

    monkeypatch.setattr(PyStanEngine, "sample", refuse)
    monkeypatch.setattr(CmdStanEngine, "sample", refuse)
    return calls


# ---------------------------------------------------------------------- priors
#: (model, K) of every registered model; the covariate model needs its annotator table.
MODELS = [("aggregate", None), ("labeled", None), ("unlabeled", 2), ("annotator", 2),
          ("covariate", 2), ("pal", 2)]

BAD_PRIORS = [
    ({"theta_sd": float("nan")}, r"prior 'theta_sd' must be finite, got nan"),
    ({"theta_sd": float("inf")}, r"prior 'theta_sd' must be finite, got inf"),
    ({"theta_sd": -1.0}, r"prior 'theta_sd' must be finite and positive, got -1\.0"),
    ({"theta_sd": 0}, r"prior 'theta_sd' must be finite and positive, got 0"),
    ({"theta_sd": "wide"}, r"prior 'theta_sd' must be a number or a list of numbers, got str"),
    ({"theta_sd": True}, r"prior 'theta_sd' must be a number .*got bool True"),
    ({"theta_sd": None}, r"prior 'theta_sd' must be a number .*got NoneType None"),
    ({"theta_sd": [[1.0]]}, r"prior 'theta_sd' must be a number or a non-empty flat list"),
    ({"theta_sd": []}, r"prior 'theta_sd' must be a number or a non-empty flat list"),
    ({"theta_sd": [1.0, "a"]}, r"prior 'theta_sd' must be a number or a non-empty flat list"),
    ({"order_sd": [1.0, -2.0]}, r"prior 'order_sd' must be finite and positive"),
]


def _encode(model: str, K: int | None, priors: object) -> None:
    comps = mixture_comps()
    if model == "covariate":
        table = pd.DataFrame({"annotator": [0, 1, 2, 3], "age": [21.0, 34.0, 47.0, 60.0]})
        comps = Comparisons.from_frame(mixture_frame(), annotators=table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IdentificationWarning)
        get_model(model).encode(comps, K=K, priors=priors)


@pytest.mark.parametrize(("model", "K"), MODELS, ids=[m for m, _ in MODELS])
@pytest.mark.parametrize(("priors", "message"), BAD_PRIORS,
                         ids=[f"{next(iter(p))}={next(iter(p.values()))!r}" for p, _ in BAD_PRIORS])
def test_every_model_refuses_a_bad_prior_by_name(model, K, priors, message):
    """One validation path (models.base.merge_priors) checks every model's priors."""
    if model == "pal" and "theta_sd" not in priors:
        priors = {"W_sd": next(iter(priors.values()))}
        message = message.replace("order_sd", "W_sd")
    with pytest.raises(PluralstanError, match=message):
        _encode(model, K, priors)


@pytest.mark.parametrize(("model", "K", "name"), [
    ("aggregate", None, "log_nu_mean"), ("labeled", None, "pi_alpha"),
    ("unlabeled", 2, "pi_alpha"), ("annotator", 2, "pi_alpha"), ("pal", 2, "w_alpha"),
])
def test_non_finite_means_and_concentrations_are_refused(model, K, name):
    with pytest.raises(PluralstanError, match=rf"prior '{name}' must be finite"):
        _encode(model, K, {name: float("-inf")})


@pytest.mark.parametrize("priors", ["theta_sd=1", [("theta_sd", 1.0)], 2.5])
def test_priors_that_are_not_a_dict_are_refused(priors):
    with pytest.raises(PluralstanError, match=r"priors must be a dict of hyperparameter name"):
        _encode("aggregate", None, priors)


def test_a_scalar_prior_given_a_list_is_refused_by_name():
    with pytest.raises(PluralstanError, match=r"prior 'order_sd' must be a single number, "
                                              r"got a list of 2"):
        _encode("aggregate", None, {"order_sd": [1.0, 2.0]})
    with pytest.raises(PluralstanError, match=r"prior 'W_sd' must be a single number"):
        _encode("pal", 2, {"W_sd": [1.0, 2.0]})
    with pytest.raises(PluralstanError, match=r"prior 'intercept_sd' must be a single number"):
        _encode("covariate", 2, {"intercept_sd": [1.0, 2.0]})


def test_valid_priors_reach_stan_data_as_given():
    enc = get_model("aggregate").encode(mixture_comps(),
                                        priors={"theta_sd": [1, 2], "log_nu_mean": -3})
    np.testing.assert_array_equal(enc.data["prior_theta_sd"], [1.0, 2.0])
    assert enc.data["prior_log_nu_mean"] == -3.0


def test_a_bad_prior_is_refused_before_stan_runs(no_stan):
    with pytest.raises(PluralstanError, match=r"prior 'theta_sd' must be finite"):
        ps.fit("aggregate", mixture_frame(), priors={"theta_sd": float("nan")})
    assert no_stan == []


# ---------------------------------------------------------------------- K given to aggregate
def test_aggregate_model_refuses_K(no_stan):
    with pytest.raises(PluralstanError, match=r"model 'aggregate' has a single population .*"
                                              r"K=3 was given"):
        ps.fit("aggregate", mixture_frame(), K=3)
    assert no_stan == []
    assert get_model("aggregate").encode(mixture_comps(), K=1).data["P"] == 2


# ---------------------------------------------------------------------- features
def test_attribute_difference_that_overflows_is_refused_by_column():
    frame = mixture_frame()
    frame.loc[2, "a_x2"], frame.loc[2, "b_x2"] = 1e308, -1e308  # a - b overflows to inf
    with pytest.raises(PluralstanError, match=r"attribute 'x2': the difference a - b is inf at "
                                              r"row 2"):
        Comparisons.from_frame(frame)
    frame.loc[2, "a_x2"], frame.loc[2, "b_x2"] = 1e200, 0.0
    with pytest.raises(PluralstanError, match=r"attribute 'x2': the difference a - b is 1e\+200"):
        Comparisons.from_frame(frame)


def test_large_attribute_differences_warn_by_column():
    frame = mixture_frame()
    frame["a_x1"] *= 1e4
    with pytest.warns(ScaleWarning, match=r"attribute 'x1': differences a - b reach .*rescale"):
        comps = Comparisons.from_frame(frame)
    assert comps.n == len(frame)  # a warning, not a refusal
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScaleWarning)
        Comparisons.from_frame(mixture_frame())  # unit-scale attributes: no warning


def test_item_feature_scale_is_checked_on_the_differences():
    frame = pd.DataFrame({"item_a": ["a", "b", "a"], "item_b": ["b", "c", "c"], "y": [1, 0, 1]})
    items = pd.DataFrame({"item": ["a", "b", "c"], "price": [1e3, 2e3, 5e3]})
    with pytest.warns(ScaleWarning, match=r"attribute 'price': differences a - b reach 4000"):
        Comparisons.from_frame(frame, items=items)
    items["price"] = [1e308, -1e308, 0.0]
    with pytest.raises(PluralstanError, match=r"attribute 'price': the difference a - b is inf"):
        Comparisons.from_frame(frame, items=items)


def test_collinear_attribute_columns_warn_naming_them():
    rng = np.random.default_rng(4)
    n = 40
    frame = pd.DataFrame({"y": rng.integers(0, 2, n),
                          **{f"{s}_{c}": rng.normal(size=n) for c in ("x1", "x2", "x3")
                             for s in "ab"}})
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentificationWarning)
        Comparisons.from_frame(frame)  # independent columns: no warning
    frame["a_x3"] = frame["a_x1"] + 2 * frame["a_x2"]
    frame["b_x3"] = frame["b_x1"] + 2 * frame["b_x2"]
    with pytest.warns(IdentificationWarning,
                      match=re.escape("attribute columns ['x1', 'x2', 'x3'] are perfectly "
                                      "collinear")):
        Comparisons.from_frame(frame)
    twice = frame.drop(columns=["a_x3", "b_x3"]).assign(a_x4=2 * frame["a_x1"] + 1,
                                                        b_x4=2 * frame["b_x1"] + 1)
    with pytest.warns(IdentificationWarning, match=re.escape("['x1', 'x4'] are perfectly")):
        Comparisons.from_frame(twice)  # collinear in a - b although the options differ by 1


# ---------------------------------------------------------------------- CSV headers and ids
@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_duplicate_csv_header_is_refused_by_name(tmp_path, bom):
    path = tmp_path / "dup.csv"
    path.write_bytes(bom + b"y,a_x,b_x,a_x,b_z\r\n1,0.1,0.2,0.3,0.4\r\n0,0.5,0.6,0.7,0.8\r\n")
    with pytest.raises(PluralstanError, match=r"names column 'a_x' more than once in its header"):
        ps.read_csv(path)


def test_duplicate_header_in_an_item_table_is_refused(tmp_path):
    comps = tmp_path / "c.csv"
    comps.write_text("item_a,item_b,y\na,b,1\nb,c,0\n")
    items = tmp_path / "items.csv"
    items.write_text("item,f,f\na,1,2\nb,3,4\nc,5,6\n")
    with pytest.raises(PluralstanError, match=r"item table file .*names column 'f' more than"):
        ps.read_csv(comps, items=items)


def test_mixed_type_annotator_ids_are_refused():
    frame = mixture_frame()
    frame["annotator"] = frame["annotator"].astype(object)
    frame.loc[frame["annotator"] == 1, "annotator"] = "0"  # 0 and "0": two annotators
    with pytest.raises(PluralstanError, match=r"column 'annotator' mixes label types "
                                              r"\(\['number', 'str'\]\).*0 and '0'"):
        Comparisons.from_frame(frame)


def test_mixed_type_item_ids_are_refused():
    frame = pd.DataFrame({"item_a": [0, 1, 0], "item_b": ["1", "2", "2"], "y": [1, 0, 1]})
    with pytest.raises(PluralstanError, match=r"item ids are number in column 'item_a' but str"):
        Comparisons.from_frame(frame)
    frame["item_b"] = pd.Series([1, "2", 2], dtype=object)
    with pytest.raises(PluralstanError, match=r"column 'item_b' mixes label types"):
        Comparisons.from_frame(frame)


def test_integer_item_ids_give_the_same_design_as_their_text():
    """Integer item ids used to miss the indicator columns (named by text): an all-zero design."""
    ints = pd.DataFrame({"item_a": [1, 2, 1], "item_b": [2, 3, 3], "y": [1, 0, 1]})
    text = ints.assign(item_a=ints["item_a"].astype(str), item_b=ints["item_b"].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentificationWarning)  # connected: nothing to warn
        X = Comparisons.from_frame(ints).design()
    np.testing.assert_array_equal(X, [[-1.0, 0.0], [1.0, -1.0], [0.0, -1.0]])
    np.testing.assert_array_equal(X, Comparisons.from_frame(text).design())


@pytest.mark.parametrize(("model", "K"), [("annotator", 2), ("covariate", 2), ("pal", 2)])
def test_annotator_type_models_refuse_a_table_without_annotators(model, K, no_stan):
    frame = mixture_frame().drop(columns=["annotator", "group"])
    annotators = None
    if model == "covariate":  # one row per judgement, as the anonymous ids are 0..N-1
        annotators = pd.DataFrame({"age": np.linspace(20, 60, len(frame))})
    comps = Comparisons.from_frame(frame, annotators=annotators)
    assert not comps.annotator_given
    with pytest.raises(PluralstanError, match=rf"'{model}'.* need an 'annotator' column: .*"
                                              r"repeated judgements of the same annotator that "
                                              r"identify the types"):
        ps.fit(model, comps, K=K)
    assert no_stan == []
    assert mixture_comps().annotator_given
    assert comps.subset([0, 1]).annotator_given is False


def test_numeric_looking_text_annotator_ids_survive_save_and_summary(tmp_path, capsys):
    """The path that crashed with ids 0 and "0": fit, save, reload, `pluralstan summary`.

    Text ids that look like numbers must come back as the same distinct ids.
    """
    comps = ps.simulate.high_conflict(n_pairs=40, n_annotators=40, pairs_per_annotator=20,
                                      seed=3)
    frame = comps.to_frame()
    frame["annotator"] = frame["annotator"].map(lambda i: f"{i:02d}" if i % 2 else str(i))
    text = Comparisons.from_frame(frame)
    idata = ps.fit("annotator", text, K=2, chains=2, draws=1000, warmup=1000, seed=4,
                   replicate=False)
    path = ps.save(idata, tmp_path / "fit.nc")
    back = ps.load(path)
    assert list(back.posterior["annotator"].values) == list(text.annotator_levels)
    assert back.posterior["annotator"].to_index().is_unique
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "model annotator" in out and "theta[0, x1]" in out and "diagnostics:" in out


# ---------------------------------------------------------------------- outputs
def test_over_long_output_names_are_refused_by_name(tmp_path):
    name = "f" * 300 + ".csv"
    with pytest.raises(PluralstanError, match=r"the name 'f+'\.\.\. is 304 bytes long and the "
                                              r"file system allows at most \d+"):
        files.write_atomic(tmp_path / name, "x")
    with pytest.raises(PluralstanError, match=r"is 304 bytes long"):
        files.write_atomic(tmp_path / name / "inner.csv", "x")  # a folder name too
    assert list(tmp_path.iterdir()) == []
    longest = "g" * 250 + ".csv"  # valid, but its temporary name used to be too long
    files.write_atomic(tmp_path / longest, "x")
    assert (tmp_path / longest).read_text() == "x"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        table = files.write_atomic(tmp_path / "t.csv", "a\n1\n")
        with files.atomic_path(tmp_path / "fit.nc") as tmp:
            tmp.write_bytes(b"data")
    finally:
        os.umask(old)
    for path in (table, tmp_path / "fit.nc"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.nc", "t.csv"]


def test_atomic_path_leaves_nothing_when_the_write_fails(tmp_path):
    with pytest.raises(OSError, match="disk full"), files.atomic_path(tmp_path / "f.nc") as t:
        t.write_bytes(b"half")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_invalid_backend_environment_variable_is_named(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "stanpy")
    with pytest.raises(PluralstanError, match=rf"unknown backend 'stanpy' \(from \${BACKEND_ENV}\)"
                                              r"; accepted: 'auto', 'pystan', 'cmdstanpy'"):
        get_engine("auto")
    with pytest.raises(PluralstanError, match=r"unknown backend 'nope' \(from the backend arg"):
        get_engine("nope")


# ---------------------------------------------------------------------- CLI --out
def _csv(tmp_path: Path) -> Path:
    path = tmp_path / "comps.csv"
    mixture_frame().to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("out", "message"), [
    ("blocker/fit.nc", r"'.*blocker' is a file, not a folder"),
    ("blocker/sub/fit.nc", r"'.*blocker' is a file, not a folder"),
    (".", r"it is a folder; give a file name"),
    ("x" * 300 + ".nc", r"is 303 bytes long"),
], ids=["under-a-file", "deep-under-a-file", "a-folder", "too-long"])
def test_cli_fit_checks_out_before_sampling(tmp_path, capsys, no_stan, out, message):
    (tmp_path / "blocker").write_text("a file, not a folder")
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(["fit", "aggregate", str(_csv(tmp_path)), "--out", str(tmp_path / out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pluralstan: error: cannot write"), err
    assert re.search(message, err), err
    assert no_stan == []  # refused before any sampling
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "comps.csv"})


def test_cli_fit_keeps_the_fit_when_saving_fails(tmp_path, capsys, monkeypatch):
    """The save fails after sampling (disk full): the fit is saved in the temp folder, the
    message says where, and the exit status is 1."""
    real_save = fit_module.save
    out = tmp_path / "fit.nc"

    def save(idata, path):
        if Path(path) == out:
            raise OSError(28, "No space left on device")
        return real_save(idata, path)

    monkeypatch.setattr(fit_module, "save", save)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    rc = main(["fit", "aggregate", str(_csv(tmp_path)), "--out", str(out), "--chains", "2",
               "--draws", "1000", "--warmup", "500"])
    captured = capsys.readouterr()
    assert rc == 1
    found = re.search(r"could not write '.*fit\.nc' \(.*No space left on device\); the fit was "
                      r"kept in '([^']+)' instead", captured.err)
    assert found, captured.err
    kept = Path(found.group(1))
    assert kept.parent == tmp_path / "tmp" and not out.exists()
    assert ps.load(kept).posterior["theta"].sizes == {"chain": 2, "draw": 1000, "attribute": 2}
    assert "diagnostics:" in captured.out  # the summary is still printed
