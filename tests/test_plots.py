"""Dashboards: files written whole, one forest row per (group, attribute), truth drawn where it
belongs, the diagnostics flag in every title, the randomised PIT uniform under a correct model."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from scipy import stats
from scipy.special import expit

from pluralstan import _arviz, plots
from pluralstan.diagnostics import flag
from pluralstan.errors import PluralstanError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ATTRS = ["x1", "x2", "x3", "x4"]


def mixture_idata(*, K: int = 2, failed: bool = False, model: str = "unlabeled", seed: int = 0,
                  chains: int = 2, draws: int = 200, cells: int = 30, annotators: int = 12):
    """A hand-built fit with the mixture layout of CONTRIBUTING.md.

    theta ``(group, attribute)`` is centred on a known matrix with a built-in non-identified
    direction: theta[0, x1] + theta[1, x1] is pinned, their difference is not (posterior
    correlation about -0.9). The log likelihood is per annotator, as in annotator-level models.
    """
    rng = np.random.default_rng(seed)
    P = len(ATTRS)
    truth = rng.normal(0, 1, size=(K, P))
    truth[:, 0] = [0.2 + 1.5 * k for k in range(K)]  # groups far apart: unambiguous matching
    ridge = rng.normal(0, 0.5, size=(chains, draws))
    theta = truth + 0.15 * rng.normal(size=(chains, draws, K, P))
    theta[..., 0, 0] += ridge
    theta[..., 1, 0] -= ridge
    pi = rng.dirichlet(np.full(K, 20.0), size=(chains, draws))
    X = rng.uniform(-1, 1, size=(cells, P))
    n = rng.integers(5, 30, size=cells)
    n_a = rng.binomial(n, expit(X @ truth.T).mean(-1))
    p_rep = (expit(np.einsum("jp,cdkp->cdjk", X, theta)) * pi[:, :, None, :]).sum(-1)
    rep_a = rng.binomial(n, p_rep)
    diverging = np.zeros((chains, draws), bool)
    if failed:
        diverging[0, ::40] = True
    idata = _arviz.from_dict(
        {"posterior": {"theta": theta, "pi": pi},
         "posterior_predictive": {"y": np.stack([n - rep_a, rep_a], axis=-1)},
         "observed_data": {"y": np.stack([n - n_a, n_a], axis=-1)},
         "log_likelihood": {"y": rng.normal(-5, 0.3, size=(chains, draws, annotators))},
         "sample_stats": {"diverging": diverging, "energy": rng.normal(size=(chains, draws))}},
        coords={"group": list(range(K)), "attribute": ATTRS, "cell": np.arange(cells),
                "outcome": ["b", "a"], "annotator": np.arange(annotators)},
        dims={"theta": ["group", "attribute"], "pi": ["group"], "y": ["cell", "outcome"]},
    )
    idata.posterior.attrs["model"] = model
    problems = [f"{int(diverging.sum())} of {chains * draws} transitions diverged"]
    if not failed:
        problems = []
    idata.posterior.attrs["diagnostics"] = json.dumps({"problems": problems})
    return idata, {"theta": truth, "pi": np.full(K, 1.0 / K), "z": np.zeros(annotators)}


def count_idata(p_obs: np.ndarray, p_rep: np.ndarray, n: np.ndarray, seed: int = 0):
    """Cell counts observed with probability ``p_obs`` and replicated with ``p_rep``."""
    rng = np.random.default_rng(seed)
    n_a = rng.binomial(n, p_obs)
    rep_a = rng.binomial(n, p_rep, size=(2, 250, n.size))
    return _arviz.from_dict(
        {"posterior": {"theta": rng.normal(size=(2, 250))},
         "posterior_predictive": {"y": np.stack([n - rep_a, rep_a], axis=-1)},
         "observed_data": {"y": np.stack([n - n_a, n_a], axis=-1)}},
        coords={"cell": np.arange(n.size), "outcome": ["b", "a"]},
        dims={"y": ["cell", "outcome"]},
    )


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
    assert plots.latent_groups(idata)
    assert "latent labels as sampled" in plots.plot_forest(idata)._suptitle.get_text()
    idata.posterior.attrs["relabelling"] = json.dumps({"method": "stephens"})
    assert "relabelled (stephens)" in plots.plot_forest(idata)._suptitle.get_text()
    idata.posterior.attrs["group_labels"] = "observed"  # recorded by the encoder: it wins
    assert not plots.latent_groups(idata)
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
    pairs = plots.nonidentified_pairs(idata, max_pairs=4)
    assert pairs[0] == ("theta[0, x1]", "theta[1, x1]")  # the built-in ridge
    assert pairs[1][0] == "pi[0]" and pairs[1][1].startswith("theta[")
    assert ("pi[0]", "pi[1]") not in pairs
    fig = plots.plot_nonidentified_pairs(idata, truth)
    ridge = fig.axes[0]
    assert float(ridge.get_title().rsplit(" ", 1)[1]) < -0.8
    assert (ridge.get_xlabel(), ridge.get_ylabel()) == pairs[0]
    # one cloud per chain, every draw drawn once
    clouds = {c.get_gid(): len(c.get_offsets()) for c in ridge.collections
              if (c.get_gid() or "").startswith("chain|")}
    assert clouds == {"chain|0": 200, "chain|1": 200}


def test_aggregate_pairs_are_the_strongest_correlations(small_bt_fit):
    pairs = plots.nonidentified_pairs(small_bt_fit, max_pairs=6)
    assert len(pairs) == 6  # all pairs of 4 attributes
    flat = plots.flatten_components(small_bt_fit)
    strength = [abs(np.corrcoef(flat[a].values.ravel(), flat[b].values.ravel())[0, 1])
                for a, b in pairs]
    assert strength == sorted(strength, reverse=True)


def test_rank_plot_shows_the_worst_rhat_components():
    idata, _ = mixture_idata(K=2)
    fig = plots.plot_rank(idata, max_components=5)
    shown = {ax.get_title().split("   R-hat")[0] for ax in fig.axes if ax.get_visible()
             and "R-hat" in ax.get_title()}
    rhat = az.rhat(plots.flatten_components(idata))
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
    obs, rep = plots.cell_frequencies(idata)
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
    assert list(plots.cell_groups(idata)) == list(codes)
    left, _ = plots.plot_ppc_cells(idata).axes
    observed = {line.get_label(): len(line.get_xdata()) for line in left.lines
                if line.get_gid() == "observed"}
    assert observed == {"group 0": 15, "group 1": 15}


def test_randomised_pit_is_uniform_when_the_predictive_is_right():
    """Criterion: with replicated counts drawn from the generating probabilities the PIT of
    400 cells passes a Kolmogorov-Smirnov test for uniformity (p > 0.01), and with the
    predictions shifted by +1 on the logit scale it fails it (p < 1e-6)."""
    rng = np.random.default_rng(1)
    n = rng.integers(1, 25, size=400)
    p = rng.uniform(0.05, 0.95, size=400)
    pit, kind, khat = plots.cell_pit(count_idata(p, p, n))
    assert kind == "in-sample" and khat is None  # no log likelihood to leave cells out with
    assert stats.kstest(pit, "uniform").pvalue > 0.01
    shifted = expit(np.log(p / (1 - p)) + 1.0)
    pit_bad, _, _ = plots.cell_pit(count_idata(p, shifted, n))
    assert stats.kstest(pit_bad, "uniform").pvalue < 1e-6


def test_loo_pit_of_an_aggregate_fit_leaves_cells_out(small_bt_fit):
    """The cell log likelihood is the per-judgement one summed over each cell's judgements; the
    aggregate model is the generating model, so its LOO-PIT passes KS uniformity (p > 0.01)."""
    ll = plots.cell_log_likelihood(small_bt_fit)
    per_row = small_bt_fit.log_likelihood["y"].isel(chain=0, draw=0).values
    cell_of_row = small_bt_fit.constant_data["cell_of_row"].values
    direct = np.bincount(cell_of_row, weights=per_row)
    np.testing.assert_allclose(ll.isel(chain=0, draw=0).values, direct)
    pit, kind, khat = plots.cell_pit(small_bt_fit)
    n_cells = small_bt_fit.observed_data.sizes["cell"]
    assert kind == "leave-one-cell-out" and pit.shape == khat.shape == (n_cells,)
    assert stats.kstest(pit, "uniform").pvalue > 0.01
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
        plots.cell_frequencies(idata)
    assert "ppc" not in plots.dashboard(idata)


# ------------------------------------------------------------------------------ files
def test_png_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    fig = Figure()
    fig.subplots().plot([0, 1])

    def broken(fname, **kwargs):
        Path(fname).write_bytes(PNG_SIGNATURE)  # a partial file, then a failure
        raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.save_png(fig, tmp_path / "sub" / "f.png")
    assert list((tmp_path / "sub").iterdir()) == []
    monkeypatch.undo()
    path = plots.save_png(fig, tmp_path / "sub" / "f.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
