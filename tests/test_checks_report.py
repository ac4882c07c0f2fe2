"""The four-item disclosure report: files, contents, diagnostics marks, whole-or-nothing output."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import replace

import pytest

import pluralstan as ps
from pluralstan.checks import disclosure_report, pi_grid_sensitivity, split_pairs
from pluralstan.diagnostics import Diagnostics, record

FAST = {"chains": 4, "draws": 300, "warmup": 300}
ITEMS = ("## 1. Subgroup composition", "## 2. Within-subgroup posteriors",
         "## 3. Identification gap (masking ratio)",
         "## 4. Prior sensitivity over the assumed mixture pi")


@pytest.fixture(scope="module")
def fits():
    comps = ps.simulate.high_conflict(n_pairs=40, n_annotators=20, seed=8)
    train, test = split_pairs(comps, 0.25, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ps.DiagnosticWarning)
        agg = ps.fit("aggregate", train, seed=1, sample_prior=True, **FAST)
        mix = ps.fit("labeled", train, seed=1, sample_prior=True, pooling="none", **FAST)
        table, grid = pi_grid_sensitivity("labeled", train, [[0.5, 0.5], [0.3, 0.7]], seed=2,
                                          pooling="none", **FAST)
    return train, test, agg, mix, table, grid


def _set_diagnostics(idata, problems):
    record(idata, Diagnostics(0, 0, 1.0, 1000.0, 1000.0, 1.0, list(problems)))


def test_report_files_and_items(fits, tmp_path):
    train, test, agg, mix, table, grid = fits
    for idata in (agg, mix, *grid.values()):
        _set_diagnostics(idata, [])
    out = tmp_path / "report"
    report = disclosure_report(train, agg, mix, out, test=test, sensitivity=table,
                               sensitivity_fits=grid)
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert md == report.markdown and page == report.html
    for heading in ITEMS:
        assert heading in md
    # the HTML is self-contained: every figure inline, none referenced by path
    assert page.count("data:image/png;base64,") == 3 and 'src="figures/' not in page
    for ref in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (out / ref).stat().st_size > 0
    # the InferenceData files behind the report load back unchanged
    back = ps.load(out / "fits" / "mixture.nc")
    assert back.posterior["theta"].equals(mix.posterior["theta"])
    assert len(list((out / "fits").glob("sensitivity_*.nc"))) == 2
    assert not list(out.rglob("*.tmp"))
    # clean fits: no diagnostics marks in any item (the preamble explains the mark)
    items = md.split(ITEMS[0])[1]
    assert "DIAGNOSTICS FAILED" not in items and "[diagnostics failed" not in items
    # item 3: on the high-conflict design the aggregate fit masks, the labeled fit much less
    ratio = report.tables["masking"].query("quantity == 'ratio'").set_index("model")["median"]
    assert ratio["aggregate"] > 5 and ratio["labeled"] < ratio["aggregate"] / 3
    # the paper's point-estimate pipeline sits beside the posterior, and masks as much
    assert ratio["point estimate"] > 5
    # power-scaling sensitivity of theta for both fits (default priors: no conflict expected)
    power = report.tables["power_scaling"]
    assert set(power["fit"]) == {"aggregate", "mixture"} and len(power) == 15
    assert "Power-scaling sensitivity of theta" in md.split(ITEMS[3])[1]
    # item 1: prior pi (Dirichlet(1, 1) -> 0.5) and observed shares are stated
    comp = report.tables["composition"]
    assert comp["prior_pi"].tolist() == [0.5, 0.5] and comp["observed_share"].sum() == 1.0
    # item 2: every theta row has its contraction
    assert report.tables["within"]["contraction"].notna().all()


def test_failed_diagnostics_are_marked(fits, tmp_path):
    train, test, agg, mix, _, _ = fits
    _set_diagnostics(agg, [])
    _set_diagnostics(mix, ["R-hat 1.2 > 1.01 for theta[0, x1] (chains disagree)"])
    report = disclosure_report(train, agg, mix, tmp_path / "r", test=test)
    md = report.markdown
    item1 = md.split(ITEMS[0])[1].split(ITEMS[1])[0]
    item3 = md.split(ITEMS[2])[1].split(ITEMS[3])[0]
    assert "[diagnostics failed: R-hat 1.2" in item1  # the mixture's claims are marked
    assert "DIAGNOSTICS FAILED" in item3  # its masking rows too ...
    statement = item3.split("\n\n")[1]
    assert "diagnostics failed" not in statement  # ... but not the aggregate fit's statement
    assert "NOT PERFORMED" in md.split(ITEMS[3])[1]
    assert json.loads(mix.posterior.attrs["diagnostics"])["problems"]


def test_bad_input_writes_nothing(fits, tmp_path):
    train, test, agg, mix, _, _ = fits
    out = tmp_path / "never"
    with pytest.raises(ps.PluralstanError, match="aggregate"):
        disclosure_report(train, mix, mix, out, test=test)
    with pytest.raises(ps.PluralstanError, match="group"):
        disclosure_report(replace(train, frame=train.frame.drop(columns="group")), agg, mix,
                          out)
    assert not out.exists()
