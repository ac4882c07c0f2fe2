"""The cmdstanpy engine, used when a CmdStan installation is found."""

from __future__ import annotations

import shutil
import time
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Interrupted, PluralstanError
from .base import (
    SAMPLE_STATS,
    Draws,
    LogDensity,
    SamplerConfig,
    StanProgram,
    build_lock,
    cache_root,
    cast_stats,
    init_values,
)


class CmdStanEngine:
    """cmdstanpy adapter, used when a CmdStan installation is present.

    Written against cmdstanpy's documented API (``CmdStanModel``, ``CmdStanMCMC.stan_variables``,
    ``method_variables``); executables are cached under ``~/.cache/pluralstan/cmdstan/<sha>``.
    """

    name = "cmdstanpy"

    @property
    def version(self) -> str:
        """``cmdstanpy/CmdStan`` versions."""
        import cmdstanpy

        return f"cmdstanpy {cmdstanpy.__version__} / cmdstan {cmdstanpy.cmdstan_version()}"

    def _stan_file(self, program: StanProgram) -> Path:
        folder = cache_root() / "cmdstan" / program.sha[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{program.name}.stan"
        if not path.exists():
            tmp = path.with_suffix(".stan.tmp")
            tmp.write_text(program.code)
            tmp.replace(path)
        return path

    def is_cached(self, program: StanProgram) -> bool:
        """Whether the executable for ``program`` exists."""
        return self._stan_file(program).with_suffix("").exists()

    def sample(self, program: StanProgram, data: dict[str, Any], config: SamplerConfig) -> Draws:
        """Compile (once) and sample with CmdStan."""
        import cmdstanpy

        t0 = time.perf_counter()
        with build_lock(program, self.name):
            compiled = not self.is_cached(program)
            model = cmdstanpy.CmdStanModel(
                stan_file=str(self._stan_file(program)), stanc_options={"O1": True}
            )
        t1 = time.perf_counter()
        try:
            fit = model.sample(
                data=data,
                chains=int(config.chains),
                iter_sampling=int(config.draws),
                iter_warmup=int(config.warmup),
                thin=int(config.thin),
                seed=int(config.seed),
                adapt_delta=float(config.adapt_delta),
                max_treedepth=int(config.max_treedepth),
                inits=None if config.inits is None else [init_values(i) for i in config.inits],
                show_progress=False,
            )
        except KeyboardInterrupt:
            # a terminal's Ctrl-C reaches CmdStan's processes too (this process's group)
            raise Interrupted("sampling interrupted (Ctrl-C)") from None
        t2 = time.perf_counter()
        variables = self._variables(fit, int(config.chains))
        methods = fit.method_variables()
        stats = {
            arviz_name: np.asarray(methods[stan_name]).T
            for stan_name, arviz_name in SAMPLE_STATS.items()
            if stan_name in methods
        }
        return Draws(variables, cast_stats(stats), self.name, self.version, t1 - t0, t2 - t1,
                     compiled)

    @staticmethod
    def _variables(fit: Any, chains: int) -> dict[str, np.ndarray]:
        """Every Stan output of a CmdStan fit as ``(chain, draw, *shape)``."""
        return {
            name: np.asarray(fit.stan_variable(name)).reshape(
                chains, -1, *np.shape(fit.stan_variable(name))[1:]
            )
            for name in fit.metadata.stan_vars
        }

    def generate(self, program: StanProgram, data: dict[str, Any], params: dict[str, Any],
                 seed: int) -> dict[str, np.ndarray]:
        """Outputs at fixed ``params``: one draw of CmdStan's ``fixed_param`` sampler."""
        import cmdstanpy

        with build_lock(program, self.name):
            model = cmdstanpy.CmdStanModel(
                stan_file=str(self._stan_file(program)), stanc_options={"O1": True}
            )
        inits = init_values(params)
        fit = model.sample(data=data, chains=1, iter_sampling=1, fixed_param=True,
                           inits=inits, seed=int(seed), show_progress=False)
        return {name: arr[0] for name, arr in self._variables(fit, 1).items()}

    def log_density(self, program: StanProgram, data: dict[str, Any]) -> LogDensity:
        """Not offered: CmdStan evaluates a log density by running its executable per call."""
        raise PluralstanError(
            f"the log density of {program.name!r} (mode search) needs backend='pystan': "
            "cmdstanpy evaluates log densities one executable run at a time, too slow for an "
            "optimiser"
        )


@cache
def cmdstan_available() -> bool:
    """Whether cmdstanpy finds a CmdStan installation (``CMDSTAN`` or its default folder)."""
    try:
        import cmdstanpy

        return bool(cmdstanpy.cmdstan_path()) and shutil.which("make") is not None
    except Exception:  # cmdstanpy raises ValueError / RuntimeError when none is installed
        return False
