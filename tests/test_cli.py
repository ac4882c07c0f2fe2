"""The ``pluralstan`` console script: simulate -> fit -> summary, help, and clear errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import pluralstan as ps
from pluralstan.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("models", "simulate", "fit", "summary"):
        assert command in out
    assert "item_a" in out  # the input format is explained


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "aggregate" in out and "Bradley-Terry" in out


def test_simulate_fit_summary_end_to_end(tmp_path, capsys):
    csv = tmp_path / "comps.csv"
    fit = tmp_path / "fit.nc"
    assert main(["simulate", "bt", "--theta", "1,-1", "--pairs", "40", "--annotators", "20",
                 "--out", str(csv)]) == 0
    assert main(["fit", "aggregate", str(csv), "--out", str(fit), "--chains", "4",
                 "--draws", "500", "--warmup", "500", "--seed", "7", "--backend", "pystan",
                 "--prior", "theta_sd=1.5"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics: all checks passed" in out
    idata = ps.load(fit)
    assert '"prior_theta_sd": [1.5, 1.5]' in idata.posterior.attrs["priors"]
    # the CLI passes every option through: the same fit from Python has identical draws
    same = ps.fit("aggregate", ps.read_csv(csv), chains=4, draws=500, warmup=500, seed=7,
                  backend="pystan", priors={"theta_sd": 1.5})
    np.testing.assert_array_equal(idata.posterior["theta"], same.posterior["theta"])
    # recovery, stated criterion: the truth inside each coordinate's central 95% interval
    lo, hi = idata.posterior["theta"].quantile([0.025, 0.975], dim=("chain", "draw")).values
    assert np.all((lo < [1.0, -1.0]) & ([1.0, -1.0] < hi)), (lo, hi)
    # `summary` prints the saved fit's numbers
    assert main(["summary", str(fit)]) == 0
    text = capsys.readouterr().out
    assert "model aggregate" in text
    means = idata.posterior["theta"].mean(("chain", "draw"))
    for attribute, value in zip(means["attribute"].values, means.values, strict=True):
        row = next(line for line in text.splitlines() if line.startswith(f"theta[{attribute}]"))
        assert float(row.split()[1]) == pytest.approx(value, abs=0.0005)


def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("a_x,b_x,y\n0.1,0.2,1\n0.3,0.1,7\n")
    out = tmp_path / "fit.nc"
    assert main(["fit", "aggregate", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'y' has value 7.0 at row 1" in err
    assert not out.exists()
    assert main(["summary", str(tmp_path / "missing.nc")]) == 2
    assert "does not exist" in capsys.readouterr().err
    good = tmp_path / "good.csv"
    good.write_text("a_x,b_x,y\n0.1,0.2,1\n0.3,0.1,0\n")
    assert main(["fit", "aggregate", str(good), "--out", str(out), "--prior", "oops"]) == 2
    assert "--prior expects KEY=VALUE" in capsys.readouterr().err
    assert not out.exists()


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "pluralstan.cli", "models"],
                            capture_output=True, text=True, check=True)
    assert "aggregate" in result.stdout


def test_disclose_writes_the_four_item_report(tmp_path, capsys):
    csv = tmp_path / "comps.csv"
    assert main(["simulate", "high-conflict", "--pairs", "24", "--annotators", "10",
                 "--out", str(csv)]) == 0
    for model, extra in (("aggregate", []), ("labeled", ["--K", "2"])):
        assert main(["fit", model, str(csv), "--out", str(tmp_path / f"{model}.nc"),
                     "--chains", "2", "--draws", "200", "--warmup", "200",
                     "--backend", "pystan", *extra]) == 0
    out = tmp_path / "report"
    assert main(["disclose", str(csv), str(tmp_path / "aggregate.nc"),
                 str(tmp_path / "labeled.nc"), "--out", str(out), "--target", "observed"]) == 0
    text = (out / "report.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert [h.split(".")[0] for h in headings[:4]] == ["## 1", "## 2", "## 3", "## 4"]
    assert "masking ratio" in headings[2].lower()
    # the report's headline number is the masking ratio of the saved aggregate fit
    ratio = ps.checks.masking_ratio(ps.load(tmp_path / "aggregate.nc"), ps.read_csv(csv),
                                     target="observed")
    median = float(ratio["ratio"].median())
    assert f"median {median:.3g}" in text
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html


def test_version_and_module_entry_point():
    # the console script and `python -m pluralstan` run the same command line, in a new process
    done = subprocess.run([sys.executable, "-m", "pluralstan", "--version"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"pluralstan {ps.__version__}"
    done = subprocess.run([sys.executable, "-m", "pluralstan", "--help"],
                          capture_output=True, text=True, check=True)
    assert "simulate" in done.stdout and "--version" in done.stdout


def test_the_version_has_one_source():
    # the installed distribution's metadata is read from pluralstan.__version__ (hatch)
    from importlib.metadata import version

    assert version("pluralstan") == ps.__version__


@pytest.mark.parametrize("command", ["models", "simulate", "fit", "disclose", "summary"])
def test_every_option_shows_its_default(command, capsys):
    from pluralstan.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    with pytest.raises(SystemExit):
        sub.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    formatter = sub._get_formatter()
    for action in sub._actions:
        if action.option_strings and not action.required and action.dest != "help":
            shown = " ".join(formatter._expand_help(action).split())
            assert "(default" in shown, action.option_strings
            assert shown in text
    if command == "fit":
        assert "--chains CHAINS Markov chains (default: 4)" in text
        assert "--sample-prior also sample the prior" in text and "(default: off)" in text


def test_latent_fit_prints_the_relabelling_and_passes_the_latent_options(tmp_path, capsys):
    csv = tmp_path / "comps.csv"
    assert main(["simulate", "high-conflict", "--pairs", "20", "--annotators", "16",
                 "--per-annotator", "10", "--out", str(csv)]) == 0
    common = ["--K", "2", "--chains", "2", "--draws", "200", "--warmup", "200",
              "--backend", "pystan"]
    assert main(["fit", "annotator", str(csv), "--out", str(tmp_path / "a.nc"), *common]) == 0
    out = capsys.readouterr().out
    assert "relabelled by stephens" in out  # the diagnostics summary is printed
    assert "label_permutation" in ps.load(tmp_path / "a.nc").sample_stats
    assert main(["fit", "annotator", str(csv), "--out", str(tmp_path / "b.nc"), *common,
                 "--no-relabel"]) == 0
    assert "label_permutation" not in ps.load(tmp_path / "b.nc").sample_stats
