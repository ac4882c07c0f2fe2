"""Figures: files written whole, one forest row per (group, attribute), truth drawn where it
belongs, the diagnostics flag in every title, the checks' numbers drawn where they belong.
The numbers themselves are tested in test_checks_cells.py and test_checks_components.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from pluralstan import _arviz, plots
from pluralstan.checks.cells import cell_frequencies, cell_groups
from pluralstan.checks.components import flatten_components, latent_groups, nonidentified_pairs
from pluralstan.diagnostics import flag
from pluralstan.errors import PluralstanError
from pluralstan.outputs import save_figure
from tests.hand_built import ATTRS, count_idata, mixture_idata

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (IHDR follows the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


def flat_text(text: str) -> str:
    return " ".join(text.split())


def interval_rows(ax) -> set[tuple[str, str]]:
    """(row label, attribute) of every outer interval line in a forest plot."""
    return {tuple(line.get_gid().split("|")[1:]) for line in ax.lines
            if (line.get_gid() or "").startswith("interval|")}


def truth_markers(ax) -> list:
    return [line for line in ax.lines if line.get_gid() == "truth"]


# ------------------------------------------------------------------------------ dashboard
def test_dashboard_writes_every_figure_as_a_whole_png(small_bt_fit, small_bt, tmp_path):
    out = plots.dashboard(small_bt_fit, out_dir=tmp_path, truth=small_bt.truth)
    assert list(out) == list(plots.FIGURES)
    for name, path in out.items():
        assert path == tmp_path / f"{name}.png" and path.stat().st_size > 10_000
        width, height = png_size(path)
        assert 500 <= width <= 2200 and 300 <= height <= 2200, (name, width, height)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.png" for n in out)


def test_dashboard_of_a_mixture_returns_figures_and_flags_every_title():
    idata, truth = mixture_idata(failed=True)
    marker = flag(idata)
    assert marker.startswith("[diagnostics failed")
    figs = plots.dashboard(idata, truth=truth, show=True)  # show: no-op outside IPython
    assert list(figs) == list(plots.FIGURES)
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        assert flat_text(marker) in flat_text(fig._suptitle.get_text()), name


def test_clean_fit_titles_carry_no_flag():
    idata, _ = mixture_idata(failed=False)
    for name, fig in plots.dashboard(idata).items():
        assert "diagnostics failed" not in fig._suptitle.get_text(), name


def test_dashboard_rejects_what_is_not_a_fit_or_a_malformed_truth(tmp_path):
    with pytest.raises(PluralstanError, match="InferenceData with a posterior"):
        plots.dashboard({"theta": np.zeros(3)})
    idata, _ = mixture_idata()
    with pytest.raises(PluralstanError, match=r"truth\['pi'\] has shape \(3,\)"):
        plots.dashboard(idata, out_dir=tmp_path, truth={"pi": np.ones(3) / 3})
    assert list(tmp_path.iterdir()) == []  # nothing drawn before the check


# ------------------------------------------------------------------------------ forest
def test_forest_has_one_row_per_group_and_attribute_with_truth_on_its_row():
    idata, truth = mixture_idata(K=3, model="labeled")
    ax = plots.plot_forest_by_group(idata, truth=truth)
    assert interval_rows(ax) == {(f"group {k}", a) for k in range(3) for a in ATTRS}
    markers = truth_markers(ax)
    assert len(markers) == 3 * len(ATTRS)
    # each truth marker sits on the y of the interval of its (group, attribute)
    y_of = {tuple(line.get_gid().split("|")[1:]): line.get_ydata()[0] for line in ax.lines
            if (line.get_gid() or "").startswith("interval|")}
    drawn = {(float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in markers}
    expected = {(truth["theta"][k, j], y_of[(f"group {k}", a)])
                for k in range(3) for j, a in enumerate(ATTRS)}
    assert drawn == expected


def test_forest_matches_latent_labels_to_the_truth_but_not_observed_ones():
    idata, truth = mixture_idata(K=2, model="unlabeled")
    swapped = {"theta": truth["theta"][::-1], "pi": truth["pi"]}
    y_rows = {}
    for model, expect_match in (("unlabeled", True), ("labeled", False)):
        idata.posterior.attrs["model"] = model
        ax = plots.plot_forest_by_group(idata, truth=swapped)
        y_of = {line.get_ydata()[0]: line.get_gid().split("|")[1] for line in ax.lines
                if (line.get_gid() or "").startswith("interval|")}
        for m in truth_markers(ax):
            group = int(y_of[m.get_ydata()[0]].split()[-1])
            x = float(m.get_xdata()[0])
            row = truth["theta"][group] if expect_match else swapped["theta"][group]
            assert x in row
        y_rows[model] = y_of
    assert y_rows["unlabeled"] == y_rows["labeled"]


def test_forest_title_says_whether_latent_labels_were_relabelled():
    idata, _ = mixture_idata(K=2, model="annotator")
    assert latent_groups(idata)
    assert "latent labels as sampled" in plots.plot_forest(idata)._suptitle.get_text()
    idata.posterior.attrs["relabelling"] = json.dumps({"method": "stephens"})
    assert "relabelled (stephens)" in plots.plot_forest(idata)._suptitle.get_text()
    idata.posterior.attrs["group_labels"] = "observed"  # recorded by the encoder: it wins
    assert not latent_groups(idata)
    assert "latent" not in plots.plot_forest(idata)._suptitle.get_text()


def test_observed_string_labels_are_named_like_codes():
    idata, _ = mixture_idata(K=2, model="labeled")
    post = _arviz.group(idata, "posterior")
    idata = _arviz.replace_groups(idata, posterior=post.assign_coords(group=["0", "1"]))
    ax = plots.plot_forest_by_group(idata)
    assert {g for g, _ in interval_rows(ax)} == {"group 0", "group 1"}
    idata = _arviz.replace_groups(idata, posterior=post.assign_coords(group=["left", "right"]))
    ax = plots.plot_forest_by_group(idata)
    assert {g for g, _ in interval_rows(ax)} == {"left", "right"}


def test_forest_of_the_aggregate_model_and_as_a_reference(small_bt_fit, small_bt):
    ax = plots.plot_forest_by_group(small_bt_fit, truth=small_bt.truth)
    assert interval_rows(ax) == {("aggregate", a) for a in ATTRS}
    assert sorted(float(m.get_xdata()[0]) for m in truth_markers(ax)) == sorted(
        small_bt.truth["theta"])
    idata, _ = mixture_idata(K=2)
    ax = plots.plot_forest_by_group(idata, reference=small_bt_fit)
    assert interval_rows(ax) == {(g, a) for g in ("group 0", "group 1", "aggregate")
                                 for a in ATTRS}


def test_forest_and_truth_validation_name_the_problem():
    idata, _ = mixture_idata(K=2)
    with pytest.raises(PluralstanError, match=r"truth\['theta'\] has shape \(4,\)"):
        plots.plot_forest_by_group(idata, truth={"theta": np.zeros(4)})
    with pytest.raises(PluralstanError, match="no variable 'beta'"):
        plots.plot_forest_by_group(idata, "beta")
    with pytest.raises(PluralstanError, match="'pi' has dims"):
        plots.plot_forest_by_group(idata, "pi")
    with pytest.raises(PluralstanError, match="prob must be"):
        plots.plot_forest_by_group(idata, prob=(0.5, 1.5))
    with pytest.raises(PluralstanError, match="mapping"):
        plots.plot_forest_by_group(idata, truth=[1, 2])


# ------------------------------------------------------------------------------ pairs and ranks
def test_pair_plot_leads_with_the_non_identified_directions():
    idata, truth = mixture_idata(K=2)
    pairs = nonidentified_pairs(idata, max_pairs=4)
    fig = plots.plot_nonidentified_pairs(idata, truth)
    ridge = fig.axes[0]
    assert float(ridge.get_title().rsplit(" ", 1)[1]) < -0.8
    assert (ridge.get_xlabel(), ridge.get_ylabel()) == pairs[0]
    # one cloud per chain, every draw drawn once
    clouds = {c.get_gid(): len(c.get_offsets()) for c in ridge.collections
              if (c.get_gid() or "").startswith("chain|")}
    assert clouds == {"chain|0": 200, "chain|1": 200}


def test_rank_plot_shows_the_worst_rhat_components():
    idata, _ = mixture_idata(K=2)
    fig = plots.plot_rank(idata, max_components=5)
    shown = {ax.get_title().split("   R-hat")[0] for ax in fig.axes if ax.get_visible()
             and "R-hat" in ax.get_title()}
    rhat = az.rhat(flatten_components(idata))
    worst = sorted(rhat.data_vars, key=lambda name: -float(rhat[name]))[:5]
    assert shown == set(worst)
    assert "5 more not shown" in fig._suptitle.get_text()  # 8 theta + 2 pi = 10 components


# ------------------------------------------------------------------------------ PPC and PIT
def test_ppc_draws_every_cell_once_per_panel():
    idata, _ = mixture_idata(cells=30)
    fig = plots.plot_ppc_cells(idata)
    left, right = fig.axes
    observed = [line for line in left.lines if line.get_gid() == "observed"]
    assert len(observed) == 1 and len(observed[0].get_xdata()) == 30
    assert sum(len(c.get_offsets()) for c in right.collections if c.get_gid() == "observed") == 30
    obs, rep = cell_frequencies(idata)
    assert obs.dims == ("cell",) and rep.dims == ("chain", "draw", "cell")
    assert float(rep.min()) >= 0 and float(rep.max()) <= 1
    # the red rings mark exactly the cells outside the replicated 90% interval
    lo, hi = rep.quantile([0.05, 0.95], dim=("chain", "draw")).values
    ring = next(line for line in left.lines if line.get_gid() == "outside")
    assert len(ring.get_xdata()) == int(((obs.values < lo) | (obs.values > hi)).sum())


def test_ppc_colours_cells_by_observed_group():
    idata, _ = mixture_idata(cells=30, model="labeled")
    codes = np.arange(30) % 2
    idata = _arviz.replace_groups(
        idata, constant_data=xr.Dataset({"cell_group": ("cell", codes)}))
    assert list(cell_groups(idata)) == list(codes)
    left, _ = plots.plot_ppc_cells(idata).axes
    observed = {line.get_label(): len(line.get_xdata()) for line in left.lines
                if line.get_gid() == "observed"}
    assert observed == {"group 0": 15, "group 1": 15}


def test_loo_pit_figure_says_cells_were_left_out(small_bt_fit):
    fig = plots.plot_cell_pit(small_bt_fit)
    assert "leave-one-cell-out" in fig._suptitle.get_text()
    assert "Pareto k > 0.7" in fig.axes[0].get_title()


def test_pit_band_is_the_simultaneous_band_for_the_number_of_cells():
    """The drawn 95% band at PIT 0.5 matches the optimised simultaneous band for 120 cells
    (half-width 0.133) to within 0.015 (Monte Carlo error of 500 simulated ECDFs)."""
    rng = np.random.default_rng(2)
    n = rng.integers(1, 25, size=120)
    p = rng.uniform(0.05, 0.95, size=120)
    fig = plots.plot_cell_pit(count_idata(p, p, n))
    band = fig.axes[0].collections[0].get_paths()[0].vertices
    at_half = band[np.isclose(band[:, 0], 0.5), 1]
    x = np.linspace(0, 1, 101)
    lower, upper = _arviz.ecdf_band(120, x, x, prob=0.95)
    assert abs((at_half.max() - at_half.min()) - (upper[50] - lower[50])) < 0.03
    assert fig.axes[0].get_title().startswith("120 cells, 95% simultaneous band")


def test_ppc_needs_counts():
    idata, _ = mixture_idata()
    idata = _arviz.replace_groups(idata, posterior_predictive=None)
    with pytest.raises(PluralstanError, match=r"posterior_predictive\['y'\]"):
        cell_frequencies(idata)
    assert "ppc" not in plots.dashboard(idata)


# ------------------------------------------------------------------------------ files
def test_png_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    fig = Figure()
    fig.subplots().plot([0, 1])

    def broken(fname, **kwargs):
        fname.write(PNG_SIGNATURE)  # part of the image, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, tmp_path / "sub" / "f.png", close=False)
    assert not (tmp_path / "sub").exists() or list((tmp_path / "sub").iterdir()) == []
    monkeypatch.undo()
    path = save_figure(fig, tmp_path / "sub" / "f.png", close=False)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
