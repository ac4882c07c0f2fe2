"""ECDF differences inside simultaneous bands: the uniformity check behind SBC and PIT.

Both simulation-based calibration (ranks of the truth) and the probability integral transform
(PIT of observed counts) end in values that are uniform when model and sampler are right. The
check is the ECDF of those values minus the uniform CDF, inside the optimised simultaneous band
of Säilynoja, Bürkner & Vehtari (2022) (:func:`pluralstan._arviz.ecdf_band`).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import xarray as xr

from .. import _arviz

__all__ = ["ecdf_difference", "simultaneous_band"]


@cache
def _band(n: int, cdf: tuple[float, ...], prob: float) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(cdf)
    return _arviz.ecdf_band(n, points, points, prob=prob)


def simultaneous_band(n: int, cdf: np.ndarray, prob: float = 0.95
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ECDF values of the simultaneous ``prob`` band for ``n`` values.

    Parameters
    ----------
    n
        Number of values behind the ECDF.
    cdf
        Reference CDF at the evaluation points (increasing).
    prob
        Simultaneous coverage.

    Returns
    -------
    lower, upper : numpy.ndarray
        Band limits at each evaluation point. They depend on the sizes only, so they are
        computed once per ``(n, cdf, prob)``.
    """
    return _band(int(n), tuple(np.asarray(cdf, dtype=float).tolist()), float(prob))


def ecdf_difference(values: np.ndarray, eval_points: np.ndarray, cdf: np.ndarray | None = None,
                    prob: float = 0.95) -> xr.Dataset:
    """ECDF of ``values`` minus the reference CDF, with the simultaneous band around zero.

    Parameters
    ----------
    values
        The values to check (PIT values, fractional ranks).
    eval_points
        Increasing points in [0, 1] at which the ECDF is evaluated.
    cdf
        Reference CDF at ``eval_points`` (default: the continuous uniform, ``eval_points``).
    prob
        Simultaneous coverage of the band.

    Returns
    -------
    xarray.Dataset
        ``ecdf_diff``, ``lower`` and ``upper`` (band minus the CDF) over dim ``x`` (the
        evaluation points); ``attrs["n"]`` and ``attrs["prob"]``.
    """
    values = np.asarray(values, dtype=float).ravel()
    z = np.asarray(eval_points, dtype=float)
    ref = z if cdf is None else np.asarray(cdf, dtype=float)
    lower, upper = simultaneous_band(values.size, ref, prob)
    return xr.Dataset(
        {"ecdf_diff": ("x", _arviz.ecdf(values, z) - ref),
         "lower": ("x", lower - ref), "upper": ("x", upper - ref)},
        coords={"x": z}, attrs={"n": int(values.size), "prob": float(prob)},
    )
