"""The four-item pluralism identifiability disclosure of the position paper, as one call.

:func:`disclosure_report` turns a comparison table, an aggregate fit and a mixture fit (plus an
optional pi-grid sensitivity run) into

1. **subgroup composition**: the stated K and mixture pi (prior, posterior, observed shares);
2. **within-subgroup posteriors**: each group's theta with credible intervals beside the
   aggregate theta, and whether each contracts below its prior;
3. **identification gap**: the masking ratio of the aggregate fit (and of the mixture fit) on
   held-out pairs, with its posterior interval;
4. **prior sensitivity**: how each theta_k moves over the grid of assumed pi,

written as Markdown, as a self-contained HTML page (figures embedded as base64 PNG) and as the
InferenceData files behind it (:func:`pluralstan.fit.save`); the figures are drawn by
:mod:`pluralstan.plots`. Every table row and statement that
rests on a fit which failed its diagnostics carries that fit's flag. Every file is written
whole or not at all (temporary file, then rename), and the Markdown and HTML are written last,
so a report never points to a missing file.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import _arviz, diagnostics, plots
from ..data import Comparisons
from ..errors import PluralstanError
from ..files import write_atomic
from ..fit import save
from ..outputs import png_bytes
from .contraction import contraction
from .intervals import central_interval
from .masking import masking_ratio, point_estimate_theta, summarize_masking
from .sensitivity import power_scaling

__all__ = ["DisclosureReport", "disclosure_report"]

#: Contraction above which a report says a parameter "contracts" (a reading aid, not a test).
CONTRACTION_READING = 0.5
#: The position paper's suggested bound on a moderate masking ratio.
PAPER_MASKING_BOUND = 1.5


@dataclass
class DisclosureReport:
    """What :func:`disclosure_report` wrote.

    Attributes
    ----------
    markdown, html
        The report text.
    paths
        ``"markdown"``, ``"html"``, each figure and each InferenceData file -> its path.
    tables
        The tables behind the four items, keyed by item.
    """

    markdown: str
    html: str
    paths: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


# ---------------------------------------------------------------------------- rendering
@dataclass
class Document:
    """Blocks rendered both to Markdown and to HTML (no Markdown library is a dependency)."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, frame: pd.DataFrame) -> None:
        """Add a table; the full diagnostic problems are stated in the text, so a non-empty
        ``flag`` shows as a short marker in each row."""
        if "flag" in frame:
            frame = frame.assign(flag=np.where(frame["flag"] != "", "DIAGNOSTICS FAILED", ""))
        self.blocks.append(("table", frame))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("figure", (name, png, caption)))

    def card(self, verdicts: pd.DataFrame) -> None:
        """Add a verdict card: columns ``item``, ``mark`` (pass / caution / fail), ``finding``
        and ``threshold``; a table in Markdown, a box with coloured marks in HTML."""
        self.blocks.append(("card", verdicts))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + value[1])
            elif kind == "text":
                out.append(value)
            elif kind in ("table", "card"):
                out.append(_markdown_table(value))
            else:
                name, _, caption = value
                out.append(f"![{caption}](figures/{name}.png)\n\n*{caption}*")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "text":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                body.append(value.to_html(index=False, border=0, na_rep="",
                                          float_format=number))
            elif kind == "card":
                body.append(_card_html(value))
            else:
                name, png, caption = value
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(name)}" '
                            f'src="data:image/png;base64,{data}"/>'
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{padding:.2em .6em;"
                 "border-bottom:1px solid #ddd;text-align:right}img{max-width:100%}"
                 ".card{border:2px solid #444;border-radius:6px;padding:.5em 1em;margin:1em 0}"
                 ".card td{text-align:left;vertical-align:top}.mark{font-weight:bold;"
                 "padding:.1em .5em;border-radius:4px;color:#fff;white-space:nowrap}"
                 ".pass{background:#2e7d32}.caution{background:#b26a00}.fail{background:#c62828}"
                 ".threshold{color:#555;font-size:90%}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
                f"{html.escape(title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _card_html(verdicts: pd.DataFrame) -> str:
    rows = "".join(
        f'<tr><td>{html.escape(str(r.item))}</td><td><span class="mark {html.escape(r.mark)}">'
        f"{html.escape(r.mark)}</span></td><td>{html.escape(r.finding)}"
        f'<div class="threshold">{html.escape(r.threshold)}</div></td></tr>'
        for r in verdicts.itertuples())
    return f'<div class="card"><table>{rows}</table></div>'


def number(value: float) -> str:
    """A report number: three significant digits, whole numbers from 1000 on (no 1.29e+03)."""
    if np.isnan(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return number(float(value))
    return str(value).replace("|", "\\|")


def _markdown_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * frame.shape[1]
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([head, rule, *rows])


def marked(text: str, idata: _arviz.Idata) -> str:
    """``text`` followed by the fit's diagnostic flag in bold, when it has one."""
    flag = diagnostics.flag(idata)
    return f"{text} **{flag}**" if flag else text


# ---------------------------------------------------------------------------- items
def composition_table(comps: Comparisons, mixture: _arviz.Idata, prob: float) -> pd.DataFrame:
    """Item one: each component's prior and posterior share (with a ``prob`` interval) and,
    when the components are the observed groups, the groups' shares of the annotators."""
    post = _arviz.group(mixture, "posterior")
    groups = [str(g) for g in post["theta"]["group"].values]
    table = pd.DataFrame({"group": groups})
    priors = json.loads(post.attrs.get("priors", "{}") or "{}")
    alpha = np.asarray(priors.get("prior_pi_alpha", []), dtype=float)
    if alpha.size == len(groups):
        table["prior_pi"] = alpha / alpha.sum()
        table["prior_concentration"] = alpha.sum()
    if "pi" in post:
        stats = central_interval(post["pi"], prob)
        table["posterior_pi"] = stats["mean"].values
        table["lower"], table["upper"] = stats["lower"].values, stats["upper"].values
    if comps.has_groups and set(groups) == {str(g) for g in comps.group_levels}:
        first = comps.frame.drop_duplicates("annotator")
        shares = first["group"].astype(str).value_counts(normalize=True)
        table["observed_share"] = shares.reindex(groups).to_numpy()
    table["flag"] = diagnostics.flag(mixture)
    return table


def within_table(aggregate: _arviz.Idata, mixture: _arviz.Idata, prob: float,
                 reference: Any = None) -> pd.DataFrame:
    """Item two: ``theta`` of the aggregate fit and of each component (mean and ``prob``
    interval), with contraction when the fits carry prior draws; an item design's
    ``reference`` item (ability fixed at 0) gets a row of zeros in every series."""
    agg_post = _arviz.group(aggregate, "posterior")
    agg = central_interval(agg_post["theta"], prob).to_dataframe().reset_index()
    agg.insert(0, "model", "aggregate")
    agg.insert(1, "group", "all")
    agg["flag"] = diagnostics.flag(aggregate)
    mix_post = _arviz.group(mixture, "posterior")
    mix = central_interval(mix_post["theta"], prob).to_dataframe().reset_index()
    mix.insert(0, "model", mix_post.attrs.get("model", "mixture"))
    mix["group"] = mix["group"].astype(str)
    mix["flag"] = diagnostics.flag(mixture)
    table = pd.concat([agg, mix], ignore_index=True)
    for label, idata in (("all", aggregate), (None, mixture)):
        if "prior" not in _arviz.groups(idata):
            continue
        c = contraction(idata, ["theta"])
        c["group"] = "all" if label else c["group"].astype(str)
        table = table.merge(c[["group", "attribute", "contraction"]], how="left",
                            on=["group", "attribute"], suffixes=("", "_new"))
        if "contraction_new" in table:
            table["contraction"] = table["contraction"].fillna(table.pop("contraction_new"))
    if "contraction" in table:
        table["contracts"] = np.where(table["contraction"].isna(), "",
                                      np.where(table["contraction"] > CONTRACTION_READING,
                                               "yes", "no"))
    if reference is not None:
        def with_reference(block: pd.DataFrame) -> pd.DataFrame:
            zero = block.iloc[:1].assign(attribute=str(reference), mean=0.0, lower=0.0,
                                         upper=0.0)
            return pd.concat([zero.drop(columns=["contraction", "contracts"], errors="ignore"),
                              block])

        table = pd.concat([with_reference(b) for _, b in
                           table.groupby(["model", "group"], sort=False)], ignore_index=True)
    cols = [c for c in table.columns if c != "flag"] + ["flag"]
    return table[cols]


# ---------------------------------------------------------------------------- entry point
def disclosure_report(
    comps: Comparisons,
    aggregate: _arviz.Idata,
    mixture: _arviz.Idata,
    out_dir: str | Path,
    *,
    test: Comparisons | None = None,
    sensitivity: pd.DataFrame | None = None,
    sensitivity_fits: Mapping[str, _arviz.Idata] | None = None,
    target: str | None = None,
    prob: float = 0.9,
    title: str = "Pluralism identifiability disclosure",
    save_fits: bool = True,
) -> DisclosureReport:
    """Write the four-item disclosure for a data set and its fits.

    Parameters
    ----------
    comps
        The judgements the models were fitted to.
    aggregate
        The aggregate-model fit (``theta`` with dims ``("attribute",)``).
    mixture
        A mixture fit (``theta`` with dims ``("group", "attribute")``, usually ``pi``).
        Fits made with ``sample_prior=True`` also get contraction in item two.
    out_dir
        Folder for ``report.md``, ``report.html``, ``figures/`` and ``fits/``.
    test
        Held-out judgements (with ``group``) for the masking ratio; without them the ratio is
        computed on ``comps`` itself and the report says so (in-sample errors are optimistic).
    sensitivity, sensitivity_fits
        Output of :func:`~pluralstan.checks.sensitivity.pi_grid_sensitivity`; without it
        item four is reported as not performed.
    target
        Masking target, ``"observed"`` or ``"truth"``; default: ``"truth"`` when the data carry
        a simulated mixture truth, else ``"observed"``.
    prob
        Mass of every credible interval.
    title
        Report title.
    save_fits
        Write the fits' NetCDF files into ``fits/`` (off when the caller keeps them already,
        as :func:`pluralstan.audit.audit` does).

    Returns
    -------
    DisclosureReport
    """
    for name, idata in (("aggregate", aggregate), ("mixture", mixture)):
        if "theta" not in _arviz.group(idata, "posterior"):
            raise PluralstanError(f"the {name} fit has no posterior 'theta'")
    if "group" in _arviz.group(aggregate, "posterior")["theta"].dims:
        raise PluralstanError("the aggregate fit's theta has a 'group' dim: pass the aggregate "
                              "(one-theta) fit as aggregate= and the mixture fit as mixture=")
    if "group" not in _arviz.group(mixture, "posterior")["theta"].dims:
        raise PluralstanError("the mixture fit's theta has no 'group' dim")
    if not comps.has_groups and test is None:
        raise PluralstanError("the masking ratio needs subgroup labels: comps has no 'group' "
                              "column and no labelled test= table was given")
    held_out = test if test is not None else comps
    truth = comps.truth or {}
    if target is None:
        target = "truth" if np.ndim(truth.get("theta", ())) == 2 and "pi" in truth else "observed"
    out = Path(out_dir)
    doc = Document()
    tables: dict[str, pd.DataFrame] = {}
    figures: dict[str, bytes] = {}
    doc.heading(title, 1)
    doc.text(f"{comps.scope}. Intervals are {prob:.0%} equal-tailed "
             "posterior intervals. Claims resting on a fit that failed its sampler diagnostics "
             "are marked **[diagnostics failed: ...]**.")

    # item 1
    mix_post = _arviz.group(mixture, "posterior")
    K = mix_post.sizes["group"]
    tables["composition"] = composition_table(comps, mixture, prob)
    doc.heading("1. Subgroup composition")
    doc.text(marked(f"Stated number of subgroups K = {K} (model "
                     f"'{mix_post.attrs.get('model', 'mixture')}'). Assumed (prior) and "
                     "estimated mixture weights pi:", mixture))
    doc.table(tables["composition"])

    # item 2
    tables["within"] = within_table(aggregate, mixture, prob, comps.reference)
    figures["theta_forest"] = png_bytes(plots.plot_theta_intervals(tables["within"]))
    doc.heading("2. Within-subgroup posteriors")
    if "contraction" in tables["within"]:
        note = (f"Contraction = 1 - Var_post / Var_prior from prior draws of the same program; "
                f"'contracts' reads contraction > {CONTRACTION_READING}.")
    else:
        note = ("Contraction not computed: the fits carry no prior draws (fit with "
                "sample_prior=True).")
    doc.text(marked(marked("Each subgroup's theta beside the aggregate theta. " + note,
                             aggregate), mixture))
    doc.table(tables["within"])
    doc.figure("theta_forest", figures["theta_forest"],
               "theta per attribute: aggregate fit and each subgroup of the mixture fit")

    # item 3
    results = {"aggregate": masking_ratio(aggregate, held_out, target=target),
               "mixture": masking_ratio(mixture, held_out, target=target)}
    point = masking_ratio(point_estimate_theta(comps), held_out, target=target)
    tables["masking"] = pd.concat([summarize_masking(r, prob) for r in (*results.values(), point)],
                                  ignore_index=True)
    figures["masking"] = png_bytes(
        plots.plot_masking_ratios(results, bound=PAPER_MASKING_BOUND))
    ratio = tables["masking"].query("quantity == 'ratio'").set_index("model")
    agg_row = ratio.iloc[0]
    doc.heading("3. Identification gap (masking ratio)")
    where = "held-out pairs" if test is not None else "the fitted pairs (in-sample)"
    doc.text(marked(
        f"Masking ratio of the aggregate fit on {where}, target '{target}': median "
        f"{agg_row['median']:.3g} ({prob:.0%} interval {agg_row['lower']:.3g} to "
        f"{agg_row['upper']:.3g}); the paper calls a ratio below {PAPER_MASKING_BOUND} "
        f"moderate. A perfect model's ratio (noise floor) is "
        f"{results['aggregate'].attrs['noise_floor']:.3g}. The mixture fit's ratio is "
        f"{ratio.iloc[1]['median']:.3g} ({ratio.iloc[1]['lower']:.3g} to "
        f"{ratio.iloc[1]['upper']:.3g}). The paper's own pipeline (one theta fitted by "
        f"least squares to the pooled frequencies) has ratio {ratio.iloc[2]['median']:.3g}.",
        aggregate))
    doc.table(tables["masking"])
    doc.figure("masking", figures["masking"], "posterior draws of the masking ratio")

    # item 4
    doc.heading("4. Prior sensitivity over the assumed mixture pi")
    if sensitivity is None:
        doc.text("NOT PERFORMED: no pi-grid sensitivity run was given "
                 "(pluralstan.checks.pi_grid_sensitivity).")
    else:
        if sensitivity_fits:  # the fits written with the report decide its marks
            flags = {label: diagnostics.flag(f) for label, f in sensitivity_fits.items()}
            sensitivity = sensitivity.assign(flag=sensitivity["grid"].map(flags).fillna(
                sensitivity["flag"]))
        tables["sensitivity"] = sensitivity
        worst = (sensitivity.assign(abs_shift_sd=sensitivity["shift_sd"].abs())
                 .groupby("grid", sort=False)
                 .agg(max_abs_shift_sd=("abs_shift_sd", "max"),
                      max_abs_shift=("shift", lambda s: s.abs().max()), flag=("flag", "first"))
                 .reset_index())
        tables["sensitivity_summary"] = worst
        figures["sensitivity"] = png_bytes(plots.plot_pi_sensitivity(sensitivity))
        failed = [g for g, f in zip(worst["grid"], worst["flag"], strict=True) if f]
        doc.text("Largest shift of any theta_k (in posterior sds of the reference grid point) "
                 "per assumed pi" + (f"; fits with failed diagnostics: {failed}" if failed
                                     else "") + ":")
        doc.table(worst)
        doc.figure("sensitivity", figures["sensitivity"], "theta_k across the pi grid")

    power = {name: power_scaling(idata, ["theta"]) for name, idata in
             (("aggregate", aggregate), ("mixture", mixture))
             if {"log_prior", "log_likelihood"} <= set(_arviz.groups(idata))}
    if power:
        tables["power_scaling"] = pd.concat(
            [t.assign(fit=name) for name, t in power.items()], ignore_index=True)
        flagged = tables["power_scaling"].query("prior_data_conflict or weak_likelihood")
        doc.text("Power-scaling sensitivity of theta (priorsense, threshold 0.05): "
                 + (f"{len(flagged)} coordinate(s) flagged: "
                    + "; ".join(f"{r.fit} {r.variable}: {r.diagnosis}"
                                for r in flagged.itertuples())
                    if len(flagged) else "no prior-data conflict or weak likelihood flagged")
                 + ".")
        doc.table(tables["power_scaling"][["fit", "variable", "prior", "likelihood",
                                           "diagnosis", "flag"]])

    # files: fits and figures first, the report last
    paths: dict[str, Path] = {}
    fits = (("aggregate", aggregate), ("mixture", mixture)) if save_fits else ()
    for name, idata in fits:
        paths[f"fit_{name}"] = save(idata, out / "fits" / f"{name}.nc")
    for i, (label, idata) in enumerate((sensitivity_fits or {}).items()):
        paths[f"fit_sensitivity_{i}"] = save(idata, out / "fits" / f"sensitivity_{i}.nc")
        write_atomic(out / "fits" / f"sensitivity_{i}.label.txt", label.encode())
    for name, png in figures.items():
        paths[f"figure_{name}"] = write_atomic(out / "figures" / f"{name}.png", png)
    doc.text("Files: " + ", ".join(str(p.relative_to(out)) for p in paths.values()) + ".")
    markdown, page = doc.markdown(), doc.html(title)
    paths["markdown"] = write_atomic(out / "report.md", markdown.encode())
    paths["html"] = write_atomic(out / "report.html", page.encode())
    return DisclosureReport(markdown, page, paths, tables)
