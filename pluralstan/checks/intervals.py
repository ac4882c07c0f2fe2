"""Posterior summaries with equal-tailed central intervals: the one place they are computed.

Tables of the checks and figures of :mod:`pluralstan.plots` report a posterior (or posterior
predictive) quantity by its mean and the central interval of mass ``prob`` over the draws;
:func:`central_interval` computes them so that every table and figure means the same by
"90% interval".
"""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from ..errors import PluralstanError

__all__ = ["SAMPLE_DIMS", "central_interval"]

#: The dims that index posterior draws.
SAMPLE_DIMS = ("chain", "draw")


def central_interval(
    da: xr.DataArray,
    prob: float = 0.9,
    dims: Sequence[str] = SAMPLE_DIMS,
    *,
    median: bool = False,
    sd: bool = False,
) -> xr.Dataset:
    """Mean and equal-tailed central ``prob`` interval of ``da`` over its draws.

    Parameters
    ----------
    da
        Draws, with the sample ``dims`` among its dims.
    prob
        Mass of the interval, in (0, 1).
    dims
        The dims to summarise over (default ``("chain", "draw")``).
    median
        Also return the median.
    sd
        Also return the standard deviation (``ddof=1``).

    Returns
    -------
    xarray.Dataset
        ``mean``, [``sd``], ``lower``, [``median``], ``upper`` with the remaining dims of
        ``da``.

    Raises
    ------
    PluralstanError
        When ``prob`` is not in (0, 1).
    """
    if not 0.0 < float(prob) < 1.0:
        raise PluralstanError(f"prob must lie in (0, 1), got {prob!r}")
    dims = list(dims)
    levels = [0.5 - prob / 2, 0.5, 0.5 + prob / 2]
    q = da.quantile(levels, dims)
    out = {"mean": da.mean(dims)}
    if sd:
        out["sd"] = da.std(dims, ddof=1)
    out["lower"] = q.isel(quantile=0, drop=True)
    if median:
        out["median"] = q.isel(quantile=1, drop=True)
    out["upper"] = q.isel(quantile=2, drop=True)
    return xr.Dataset(out)
