"""pluralstan benchmark harness: one table for the performance targets of issue 5.

Run from the repository root::

    python benchmarks/run.py                 # full sizes (tens of minutes on 2 cores)
    python benchmarks/run.py --quick         # tiny sizes: proves the harness works
    python benchmarks/run.py --targets 1 3 --out benchmarks/results
    python benchmarks/run.py --targets 3 --profile-n 1000 10000 100000 1000000  # 1e6 gradients

It prints one table and writes ``benchmarks.csv``, ``benchmarks.md`` and ``machine.json`` to the
output folder (default ``benchmarks/results``, git-ignored; the latest full table is kept as
``benchmarks/latest_results.{md,csv}``). Every ratio is measured side by side in one run,
on the same data with the same number of chains, warm-up iterations and draws, because the
machines these run on are shared and noisy: read ratios, not absolute seconds.

What the rows measure
---------------------
``seconds``
    Sampling wall time (warm-up plus draws), compilation excluded for every engine: Stan
    programs come from the compile cache (compiled, untimed, on first use); NumPyro's XLA
    programs from JAX's persistent compilation cache (a first, untimed run fills it); PyMC's
    own ``sampling_time``.
``min_ess_bulk`` / ``ess_per_s``
    Bulk ESS (``arviz.ess``), minimum over every coordinate of the model parameters that all
    engines share (``theta``, and ``pi`` for mixtures), per second of ``seconds``. Mixture draws
    are put in one label order per chain first (:func:`canonical_labels`), the same way for every
    engine (the labeled models' observed groups are left as they are); otherwise chains that
    settled in different label permutations make ESS meaningless.
``grad_ms``
    Milliseconds per evaluation of the log density and its gradient. Stan:
    :func:`stan_gradient_seconds` (slope of sampling time on leapfrog steps, so data loading,
    generated quantities and output transfer drop out). NumPyro: a jitted ``value_and_grad``
    of the potential. PyMC: its compiled ``logp_dlogp_function``.
``grads_per_draw`` / ``ess_per_kgrad``
    Leapfrog steps (gradients) per saved draw, mean over chains and draws, and bulk ESS (the
    ``min_ess_bulk`` above) per 1,000 gradients of the saved draws. With ``grad_ms`` they split
    an ESS/s difference between engines into cost per gradient and sampler efficiency per
    gradient; what is left is per-draw and per-request overhead (Stan: generated quantities,
    PyStan's output transfer and the request's start-up, reported in ``note`` as the
    ``fixed_param`` seconds per draw, start-up included).
``ratio`` / ``ratio_is`` / ``goal`` / ``meets``
    The quantity the issue sets a goal for, what it divides, the goal, and whether this run met
    it. Rows from fits carry :func:`pluralstan.diagnostics.flag` (empty when the fit passed) in
    ``note``.

Targets (issue 5): 1 sufficient statistics vs a naive per-row program written the way bpcs writes
Bradley-Terry (``benchmarks/stan/naive_bt.stan``, ``naive_labeled_bt.stan``); 2 the aggregate and
annotator-latent models in NumPyro and PyMC (``benchmarks/peers``, optional extra
``pluralstan[bench]``; skipped with a note when absent); 3 scaling of the annotator model with the
number of judgements, and peak memory; 4 whole workflow scripts and the warm re-run overhead of a
fit; 6 within-chain parallelism (``reduce_sum``) under PyStan. Target 5 (parallel and distributed
sweeps) is a feature of :mod:`pluralstan.parallel`, not a benchmark. ``sparse`` (not an issue
target) times the annotator model's gradient with the design dense and in compressed rows, on
an item design and an attribute design, to check the form pluralstan picks for each.
``input`` (issue 23) validates and encodes (aggregate model) 1e6 judgements over 10,000 items
in a fresh process and reports its peak RSS against the goal of 1 GB, and the seconds each
step took: item designs are index-based and go to Stan in compressed rows, never as a dense
judgements x items matrix.
``engines`` (issue 22) samples the annotator model (target 2's data) and the labeled model
(target 1's design, ``pooling='none'``) under PyStan and under cmdstanpy; the cmdstanpy row's
ratio is its ESS/s over PyStan's, and it is skipped, saying so, when no CmdStan is installed.
``realdata`` (issue 21, goal 1) runs ``workflows/audit_datasets.py`` at its defaults on each real
data set (``--realdata``; default all five, vTaiwan taking about an hour) and
``workflows/audit_personas.py`` at its defaults (``personas``), each in a process of its own, and
reports its wall time and peak resident memory against the goal of 15 minutes and 2 GB
(:func:`target_realdata`).
``search`` (issue 21, goal 1) times the mode search before a latent-type fit with its starts in
one process and side by side in worker processes, on the tax conjoint
(:func:`target_search`).
``laplace`` (issue 21, goal 1) counts the leapfrog steps of the audit's latent-type fits on the
tax conjoint, warm-up included, started in the searched mode with unit scales and with the
mode's Laplace sds as the scales of the program's coordinates (:func:`target_laplace`).
``ahead`` (issue 21, goal 3) runs target 2's annotator model against NumPyro at 4 chains x 1000
warm-up iterations + 1000 draws, three times with new sampler seeds, under PyStan and cmdstanpy,
against a NumPyro program on the same sufficient statistics as the Stan program and against
target 2's per-judgement one, and reports the median and range of the per-repetition ESS/s
ratios (:func:`target_ahead`).

Within-chain parallelism (target 6)
-----------------------------------
httpstan 4.13 compiles every model with ``STAN_THREADS`` defined (``httpstan/models.py``) but never
calls Stan's ``init_threadpool_tbb``, so ``STAN_NUM_THREADS`` is ignored and ``reduce_sum`` runs in
TBB's default arena, one thread per core; the probe counts the sampler worker's threads to show it.
PyStan also runs one chain per worker process of a pool with one worker per core. So on a machine
with as many chains as cores (the default here: 2 and 2) threads can only compete with the other
chains, and the gain per gradient has to pay for ``reduce_sum``'s slicing and its extra autodiff
stacks; the table reports that trade directly. pluralstan's own models need it least: their
likelihoods run over sufficient-statistic cells, not judgements. With cmdstanpy
(``cpp_options={"STAN_THREADS": True}``, ``threads_per_chain=``) the thread count per chain is
explicit, so one long chain, or fewer chains than cores, can use the spare cores; CmdStan cannot
be installed on these machines (no network route to its releases), so that is not measured here.

Memory (target 3)
-----------------
The annotator model stores its log likelihood per annotator (``log_likelihood["y"]`` with dim
``annotator``; the unit leave-one-annotator-out LOO needs), so memory grows with annotators x
draws, never judgements x draws. The model has no option for a per-judgement matrix: a
judgement's log likelihood is not defined without the annotator's latent type, and the
type-conditional one (theta_k per draw against ``constant_data`` ``X`` and ``cell_of_row``) can be
computed from the posterior when wanted. The aggregate and labeled models store one value per
judgement (dim ``comparison``), expanded in Python from cell-level outcome probabilities.
What does grow with annotators is the rest of a draw: ``log_lik`` (I values) and
``membership`` (I x K) are 3 I numbers per draw at K = 2, and PyStan keeps every draw's JSON
text on its fit object besides the parsed array. With the default output, 1e5 judgements
(10,000 annotators, 2 chains x 300 draws) put the Python process at 2.4 GB. The large-data
options ``replicate=False`` (no ``y_rep``, cells x outcomes per draw) and ``membership=False``
(no I x K membership; relabelling then uses the pivot method) leave the parameters and the
per-annotator ``log_lik``, and the same fit then peaked at 0.95-1.43 GB (Python; four runs) and
0.46 GB (sampler worker). At 1e6 judgements (100,000 annotators) that ``log_lik`` alone took the
Python process to 5.85 GB (2 x 300 draws): PyStan parses each draw's 100,000 values from JSON.
``log_lik=False`` drops it as well; every annotator fit here now uses all three options
(:data:`OPTIONS`), as the peers compute none of these outputs. (Those measurements predate
e47fbc7, since which ``membership`` and ``log_lik`` are computed in NumPy from the parameter
draws after sampling and no longer pass through PyStan's JSON; the options still bound the
arrays, annotators x draws each.)
``ru_maxrss`` is read without tracing allocations, which would itself cost memory.

Where the annotator model's time goes (target 2)
------------------------------------------------
On the target-2 data (1,000 annotators x 20 judgements, K = 2; 2 chains x 300 + 300
iterations; quiet machine):

* Sampling took 14.5-15.9 s in PyStan against NumPyro's 9.3-11.4 s (two runs). Both samplers
  spend about 4,050 gradients per chain; Stan's NUTS gets more ESS per gradient
  (``ess_per_kgrad`` 168 vs 130), which is worth 1.29x, but its gradient costs more: sampling
  time per gradient, all in, was 3.6 ms against 2.3 ms.
* One gradient: JAX 1.6-2.4 ms (jitted ``value_and_grad``, the NumPyro row's ``grad_ms``),
  Stan 3.1-3.6 ms inside PyStan's sampler (``grad_ms``, one core), PyMC 3.8-4.1 ms. ``perf`` on
  the sampler process puts 38% of its time in glibc's scalar ``log1p`` and ``exp`` (the log
  normaliser ``log1p_exp`` over the cells x types matrix, which XLA evaluates vectorised and
  fused) and the rest in the model's reverse mode (design product, annotator sums, the
  autodiff stack); NUTS's own work is negligible, and the Python process used 1.25 s of CPU
  during an 18 s one-chain run.
* The same stanc output timed outside any sampler (a scratch C++ driver calling
  ``stan::model::log_prob_grad`` at fresh points, httpstan's flags, one core): 2.6-2.8 ms as
  an executable, 3.3-3.7 ms as a module loaded into Python. httpstan builds with
  ``STAN_THREADS``, so Stan's autodiff stack is ``thread_local``, and a ``dlopen``-ed module
  reached it through ``__tls_get_addr`` at every autodiff node. Built with TLS descriptors the
  loaded module took 2.65-3.2 ms, so pluralstan now builds that way
  (:func:`pluralstan.engine.pystan_compile_args`); target ``flags`` measures it in the sampler
  (3.93 -> 3.33 ms, 1.18x). The annotator ratio to NumPyro was 0.80x in the run before the
  change and 0.91x and 0.81x in the two after it (NumPyro's own time varied 9.3-14.4 s over
  the three runs).
* A saved draw adds 0.6 ms of generated quantities and output (the 1,000 per-annotator log
  likelihoods kept for LOO, and the parameters): ``fixed_param`` at 100 and 1,300 draws took
  0.24 and 1.00 s. The ``note``'s "ms per draw" is larger because it spreads the request's
  start-up (data, model instantiation) over 600 draws; sampling pays that once too.
* Stan ``profile`` blocks put 60% of the gradient in the log normaliser, 20% in
  ``X * theta'``, 12% in the annotator-indicator ``csr_matrix_times_vector``, 4% in the
  per-annotator ``log_sum_exp`` loop. Rewriting the loop as a row-max matrix expression or as
  ``log_mix``, or the per-type sparse products as one block-diagonal product, changed the
  gradient by 0.98x-1.17x (within the run-to-run noise); per-annotator ``binomial_logit_glm``
  calls (analytic gradients, 2,000 calls) were 1.17x slower, per-annotator ``binomial_logit``
  1.2x-1.9x; ``stanc --O1`` (matrices as one autodiff node) 0.95x. The program was left as it
  is. (Later, once ``--O1`` kept every matrix as one node, the loop was a third of the
  gradient on this data, and summing the types a column at a time on whole vectors,
  ``log_sum_exp_rows``, took a gradient from 0.60 to 0.41 ms, medians side by side.)
* Why ``--O1`` did nothing then (``--debug-mem-patterns``): stanc keeps a matrix of parameters
  as one node (struct of arrays) only where every function it reaches allows it, and one
  conditional expression (``from_coordinates``), overloaded functions (never inlined) and
  ``array[] vector`` parameters turned every matrix of the program back into a node per
  element. Rewritten without them, and with the log normaliser as whole-matrix ``exp`` and
  ``log`` (vectorised by Eigen, derivatives from the stored values), every matrix of the
  annotator and covariate programs is one node, and both engines compile with ``--O1``. One
  gradient on one core (tax conjoint, K = 4, ``stan_gradient_seconds``, one after the other):
  3.58 ms as the program was (sparse design), 3.01-3.26 ms rewritten (sparse), 2.05-2.23 ms
  rewritten with the design dense (2.85 ms as it was, dense). The dense product is one
  matrix product each way, so these programs take the dense form down to a fifth of non-zeros
  (at 0.198 the two forms took 2.32 and 2.44 ms). ``-march=native`` crashed the module
  (httpstan's prebuilt ``stan_services.o`` has the other vector ABI).

So NumPyro still won on this model then (pluralstan 0.81x-0.91x; 0.76x at 4 chains x 1000 in
target ``ahead``, benchmarks/latest_results.md): its fused, vectorised gradient
costs about 0.65x of Stan's, which Stan's 1.29x more ESS per gradient does not make up. PyMC,
whose gradient is dearer, is level or behind (pluralstan 1.02x-1.18x).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # the peers live in benchmarks/peers, beside this script
    sys.path.insert(0, str(REPO))

import pluralstan as ps  # noqa: E402
from pluralstan import _arviz, diagnostics, realdata  # noqa: E402
from pluralstan.engine import (  # noqa: E402
    STANC_OPTIONS,
    Draws,
    PyStanEngine,
    SamplerConfig,
    StanProgram,
    cmdstan_available,
    discard_stored_fits,
    pystan_compile_args,
)
from pluralstan.files import write_atomic  # noqa: E402
from pluralstan.models import get_model  # noqa: E402
from pluralstan.models.base import Encoded, design_data, load_program, stan_design  # noqa: E402

#: Model parameters compared across engines (those a model has).
PARAMETERS = ("theta", "pi")
#: Two posterior means agree when they differ by at most this many combined MCSEs.
AGREEMENT_Z = 3.0
#: Seconds after which a workflow script is stopped (the goal for both together is 300).
WORKFLOW_TIMEOUT = 1200
#: Arguments of the timed workflow scripts (target 4): the issue's 6-sigma x 10-replicate
#: diversity sweep is one nu (the script's default sweeps three, 180 fits).
WORKFLOW_ARGS = {"diversity_sweep.py": ("--nu", "0", "--replicates", "10")}
#: Issue 21's goal for every real-data audit (target ``realdata``): minutes and peak GB.
REALDATA_GOAL = (15.0, 2.0)
#: NumPyro and PyMC, when installed (the optional extra ``pluralstan[bench]``).
PEERS = {"numpyro": "numpyro", "pymc": "pymc"}
#: Options of every annotator-model fit here: the large-data options. ``replicate=False``
#: drops ``y_rep`` (cells x outcomes per draw), ``membership=False`` the annotators x K
#: membership probabilities and ``log_lik=False`` the per-annotator log likelihood; the peers
#: generate none of them, and PyStan's output transfer makes them the dearest part of a draw on
#: large data.
OPTIONS = {"aggregate": {},
           "annotator": {"K": 2, "replicate": False, "membership": False, "log_lik": False}}
#: Target 2 also times the annotator model with membership kept (its default; y_rep still off).
WITH_MEMBERSHIP = {"annotator": {"membership": True}}


# ---------------------------------------------------------------------------- settings and rows
@dataclass(frozen=True)
class Settings:
    """Problem sizes and sampler settings of one benchmark run.

    Attributes
    ----------
    n_pairs, n_annotators
        Target 1: the seed paper's Table 1 design (every annotator judges every pair once).
    peer_annotators, peer_pairs_per_annotator
        Target 2: annotators and judgements each (200 pairs), 1,000 x 20 = 20,000 judgements.
    scaling_n
        Target 3: numbers of judgements (10 per annotator).
    profile_n
        Target 3: numbers of judgements at which the gradient alone is timed
        (:func:`gradient_profile`).
    chains, warmup, draws
        NUTS settings shared by every engine in a comparison.
    grad_draws, grad_repeats
        Warm-up iterations and draws of a gradient-timing run, and how many runs it takes the
        fastest of (:func:`stan_gradient_seconds`).
    workflows
        Target 4: time the workflow scripts (skipped in ``--quick``).
    design_items
        Items of the item design whose two design forms are compared (:func:`target_design_form`).
    input_n, input_items
        Target ``input``: judgements and items of the table validated and encoded
        (:func:`input_probe`).
    ahead_chains, ahead_draws, ahead_repeats
        Target ``ahead``: chains, warm-up iterations (and as many draws) and repetitions of
        the annotator model against NumPyro (:func:`target_ahead`).
    geometry_groups, geometry_judgements, geometry_real
        Target ``geometry``: groups of the simulated labeled designs, judgements per
        annotator in each, and whether to add the tax conjoint (:func:`geometry_cases`;
        also target ``whiten``'s, :func:`whiten_cases`, and target ``search``'s data).
    whiten_K
        Target ``whiten``: numbers of types of the annotator fits (:func:`whiten_fits`).
    search_K, search_repeats
        Target ``search``: numbers of types of the annotator fits whose mode search is timed,
        and how many times each pair of searches runs (:func:`target_search`); target
        ``laplace``'s numbers of types (:func:`target_laplace`).
    realdata
        Target ``realdata``: the data sets of ``workflows/audit_datasets.py`` audited, each at
        that script's defaults (``--quick`` settings: its ``--quick``), and ``"personas"``,
        ``workflows/audit_personas.py`` at its defaults.
    realdata_keep
        Target ``realdata``: a folder in which each audit's report folder is kept (to compare
        its conclusions with the last run's); ``None`` deletes them.
    """

    n_pairs: int = 200
    n_annotators: int = 100
    peer_annotators: int = 1000
    peer_pairs_per_annotator: int = 20
    scaling_n: tuple[int, ...] = (1_000, 10_000, 100_000)
    profile_n: tuple[int, ...] = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
    chains: int = 2
    warmup: int = 500
    draws: int = 500
    grad_draws: int = 50
    grad_repeats: int = 3
    workflows: bool = True
    design_items: int = 100
    input_n: int = 1_000_000
    input_items: int = 10_000
    ahead_chains: int = 4
    ahead_draws: int = 1000
    ahead_repeats: int = 3
    geometry_groups: int = 8
    geometry_judgements: tuple[int, ...] = (100, 5)
    geometry_real: bool = True
    whiten_K: tuple[int, ...] = (2, 3)
    search_K: tuple[int, ...] = (2, 3, 4)
    search_repeats: int = 2
    realdata: tuple[str, ...] = ("cems", "german_parties", "polis_brexit", "taxes", "vtaiwan",
                                 "personas")
    realdata_keep: str | None = None
    seed: int = 20261122


QUICK = Settings(n_pairs=20, n_annotators=10, peer_annotators=20, peer_pairs_per_annotator=5,
                 scaling_n=(100, 300), profile_n=(100, 200, 300), warmup=100, draws=100,
                 grad_draws=50, grad_repeats=1, workflows=False, design_items=12,
                 input_n=20_000, input_items=1_000, ahead_chains=2, ahead_draws=100,
                 ahead_repeats=2, geometry_groups=3, geometry_judgements=(10,),
                 geometry_real=False, whiten_K=(2,), search_K=(2,), search_repeats=1,
                 realdata=("german_parties", "personas"))


@dataclass
class Row:
    """One line of the benchmark table (see the module docstring for the columns)."""

    target: str
    case: str
    engine: str
    n: int | None = None
    chains: int | None = None
    draws: int | None = None
    seconds: float | None = None
    min_ess_bulk: float | None = None
    ess_per_s: float | None = None
    grad_ms: float | None = None
    grads_per_draw: float | None = None
    ess_per_kgrad: float | None = None
    ratio: float | None = None
    ratio_is: str = ""
    goal: str = ""
    meets: str = ""
    note: str = ""


@dataclass
class Run:
    """Draws of one engine on one problem, in engine-neutral form.

    ``variables`` are ``(chain, draw, ...)`` arrays of the compared parameters;
    ``sample_stats`` use ArviZ names (``diverging``, ``energy``, ...). ``observed_labels``:
    the components are observed groups (the labeled models), which cannot switch and keep
    their order (:func:`canonical_labels` leaves them alone).
    """

    engine: str
    variables: dict[str, np.ndarray]
    sample_stats: dict[str, np.ndarray]
    sample_seconds: float
    build_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    observed_labels: bool = False


# ---------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """CPU model, cores, memory and library versions of the machine the table was made on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pluralstan": ps.__version__,
        "stan engine": PyStanEngine().version,
        "arviz": az.__version__,
        "numpy": np.__version__,
    }
    with contextlib.suppress(OSError, ValueError):
        kb = next(line for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        info["memory_gb"] = round(int(kb.split()[1]) / 2**20, 1)
    for name in PEERS:
        peer = load_peer(name)
        info[name] = peer.version() if peer else "not installed"
    return info


def load_peer(name: str) -> Any | None:
    """The peer module ``benchmarks.peers.<name>_bt``, or ``None`` when its library is absent."""
    if importlib.util.find_spec(PEERS[name]) is None:
        return None
    if name == "numpyro":
        from benchmarks.peers import numpyro_bt

        return numpyro_bt
    from benchmarks.peers import pymc_bt

    return pymc_bt


# ---------------------------------------------------------------------------- running Stan
@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence sampler chatter and diagnostic warnings (they are reported in the table)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Run this thread, and httpstan's sampler processes, on one CPU core (Linux; else no-op).

    :func:`stan_gradient_seconds` subtracts a ``fixed_param`` run's time from a NUTS run's.
    That is exact only when the sampler and this process's handling of its messages take
    turns on one core; with a core free they overlap, by an amount that changes with the
    model's size. Unpinned, the annotator model's gradient came out 1.2x dearer per judgement
    at 1e5 judgements than at 1e3 (and 0.17-0.26 us per judgement at 1e4 from run to run);
    pinned, the same runs were flat (0.254, 0.247 and 0.244 us at 1e3, 1e4 and 1e5), and so
    was a method with no subtraction (NUTS at tree depth 1 against depth 10: 0.266, 0.256,
    0.239 us). httpstan's sampler processes are a module-level pool that outlives one call,
    so its live workers (a private attribute) are pinned too; new ones inherit the mask.
    """
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    import httpstan.services_stub

    saved = os.sched_getaffinity(0)
    pids = [0, *(p.pid for p in (httpstan.services_stub.executor._processes or {}).values())]
    for pid in pids:
        os.sched_setaffinity(pid, {min(saved)})
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, saved)


def program(file_name: str) -> StanProgram:
    """A benchmark-only Stan program from ``benchmarks/stan``."""
    path = HERE / "stan" / file_name
    return StanProgram(name=path.stem, code=path.read_text())


def ensure_built(prog: StanProgram, compile_args: tuple[str, ...] | None = None,
                 stanc_options: tuple[str, ...] | None = None) -> None:
    """Compile ``prog`` into httpstan's cache unless it is there (:meth:`PyStanEngine.compile`,
    with pluralstan's flags and stanc options unless others are given); ``stan.build`` then
    loads it."""
    with quiet():
        PyStanEngine().compile(prog, compile_args, stanc_options)


def config(s: Settings, seed: int | None = None) -> SamplerConfig:
    """The shared NUTS settings."""
    return SamplerConfig(chains=s.chains, draws=s.draws, warmup=s.warmup,
                         seed=s.seed if seed is None else seed)


def run_registered(model: str, comps: ps.Comparisons, s: Settings, label: str,
                   backend: str = "pystan", **options: Any) -> Run:
    """Fit a registered pluralstan model through :func:`pluralstan.fit` (PyStan unless
    ``backend`` says otherwise); compilation is outside ``sample_seconds`` for either engine,
    and a mode search the fit ran first (``modes="search"``) is inside it: the user waits
    for both."""
    if backend == "pystan":
        ensure_built(get_model(model).program)
    with quiet():
        idata = ps.fit(model, comps, chains=s.chains, draws=s.draws, warmup=s.warmup,
                       seed=s.seed, backend=backend, check=False, **options)
    post = idata.posterior
    return Run(
        engine=label,
        variables={k: post[k].to_numpy() for k in PARAMETERS if k in post},
        sample_stats={k: idata.sample_stats[k].to_numpy()
                      for k in ("diverging", "tree_depth", "n_steps", "energy")},
        sample_seconds=float(post.attrs["sample_seconds"]) + search_seconds(post.attrs),
        build_seconds=float(post.attrs["build_seconds"]),
        extra={"idata": idata},
        observed_labels=post.attrs.get("group_labels") == "observed",
    )


def mode_search(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The mode search recorded in a fit's posterior attributes (``None`` without one)."""
    return json.loads(attrs["mode_search"]) if "mode_search" in attrs else None


def search_seconds(attrs: dict[str, Any]) -> float:
    """Seconds of the mode search recorded in a fit's posterior attributes (0 without one)."""
    found = mode_search(attrs)
    return 0.0 if found is None else float(found["seconds"])


def run_program(prog: StanProgram, data: dict[str, Any], s: Settings, label: str,
                observed_labels: bool = False) -> Run:
    """Sample a benchmark-only Stan program with pluralstan's PyStan engine
    (``observed_labels``: see :class:`Run`)."""
    ensure_built(prog)
    with quiet():
        draws: Draws = PyStanEngine().sample(prog, data, config(s))
    return Run(label, {k: v for k, v in draws.variables.items() if k in PARAMETERS},
               draws.sample_stats, draws.sample_seconds, draws.build_seconds,
               observed_labels=observed_labels)


def run_peer(peer: Any, model: str, data: dict[str, Any], s: Settings) -> Run:
    """Sample a peer model (NumPyro or PyMC) with the shared settings."""
    with quiet():
        out = peer.sample(model, data, chains=s.chains, warmup=s.warmup, draws=s.draws,
                          seed=s.seed)
    return Run(peer.NAME, {k: v for k, v in out["variables"].items() if k in PARAMETERS},
               out["sample_stats"], out["sample_seconds"], out["build_seconds"])


@dataclass(frozen=True)
class StanTiming:
    """What :func:`stan_gradient_seconds` measures: a gradient, and a draw without one."""

    gradient: float  #: seconds per log-density gradient
    per_draw: float  #: seconds per ``fixed_param`` draw: generated quantities, output, start-up


def stan_gradient_seconds(prog: StanProgram, data: dict[str, Any], iterations: int,
                          repeats: int = 1, seed: int = 1, pinned: bool = True,
                          compile_args: tuple[str, ...] | None = None,
                          stanc_options: tuple[str, ...] | None = None) -> StanTiming:
    """Seconds per log-density gradient of a compiled Stan program under PyStan.

    PyStan's ``grad_log_prob`` rebuilds the model from its data on every call (an HTTP request
    to httpstan), so timing it measures data loading, not gradients; and Stan's step-size
    initialisation overrides any fixed step size, so trajectory lengths cannot be forced.
    Instead one chain runs NUTS for ``iterations`` warm-up and ``iterations`` saved draws,
    counting every leapfrog step (``save_warmup``), and the ``fixed_param`` sampler then runs
    the same number of iterations without any gradient: same model set-up, generated
    quantities and output transfer. The difference in wall time, divided by the number of
    leapfrog steps, is the cost of one gradient. It can come out at or below zero when the
    gradients are cheaper than the timing noise of a shared machine; the table says so. The
    ``fixed_param`` run's seconds per draw are returned too: generated quantities, PyStan's
    output transfer and the request's start-up spread over its draws, which sampling pays on
    top of the gradients.
    With ``repeats`` > 1 the pair of runs is repeated with new seeds: the per-draw cost is the
    fastest ``fixed_param`` run's, and the gradient the smallest over the NUTS runs of their
    time less that per-draw cost, per leapfrog step. Noise on a shared machine only adds time,
    so each minimum is taken over a timing, never over a difference of two timings (whose
    minimum noise would pull low). httpstan's stored fits are deleted as the package's own
    fits' are, so no timing is a read of a stored fit. The runs are ``pinned`` to one core
    (:func:`one_core`) unless the program is to use threads (target 6). ``compile_args`` and
    ``stanc_options``: as for :func:`ensure_built`.
    """
    import stan

    ensure_built(prog, compile_args, stanc_options)
    timings = []
    with quiet(), discard_stored_fits(), one_core() if pinned else contextlib.nullcontext():
        for r in range(repeats):
            model = stan.build(prog.code, data=data, random_seed=seed + r)
            t0 = time.perf_counter()
            fit = model.sample(num_chains=1, num_warmup=iterations, num_samples=iterations,
                               save_warmup=True)
            t1 = time.perf_counter()
            model.fixed_param(num_chains=1, num_samples=2 * iterations)
            t2 = time.perf_counter()
            timings.append((t1 - t0, float(np.sum(fit["n_leapfrog__"])), t2 - t1))
    per_draw = min(t[2] for t in timings) / (2 * iterations)
    return StanTiming(min((t - per_draw * 2 * iterations) / n for t, n, _ in timings), per_draw)


# ---------------------------------------------------------------------------- summaries
def canonical_labels(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Put mixture components in one order per chain: decreasing chain mean of ``theta[:, 0]``.

    A chain-level relabelling (written here because no maintained Python library relabels
    mixtures; :mod:`pluralstan.relabel` needs allocation probabilities that the peers do not
    produce). It is applied identically to every engine, so ESS and posterior means are
    compared on the same labelling. Switches within a chain are not undone; they would show as
    low ESS and a diagnostics flag.
    """
    theta = variables.get("theta")
    if theta is None or theta.ndim != 4:  # (chain, draw, group, attribute): a mixture
        return variables
    out = {k: v.copy() for k, v in variables.items()}
    for c in range(theta.shape[0]):
        order = np.argsort(-theta[c, :, :, 0].mean(axis=0))
        out["theta"][c] = theta[c][:, order]
        if "pi" in out:
            out["pi"][c] = variables["pi"][c][:, order]
    return out


def posterior_of(run: Run) -> Any:
    """A fit (the installed ArviZ's container) of the compared parameters and sampler stats;
    mixture components in :func:`canonical_labels`' order unless they are observed groups."""
    variables = run.variables if run.observed_labels else canonical_labels(run.variables)
    return _arviz.make_idata({"posterior": _arviz.dataset_from_dict(variables),
                              "sample_stats": _arviz.dataset_from_dict(run.sample_stats)})


def min_ess(idata: Any) -> float:
    """Minimum bulk ESS over every coordinate of every compared parameter."""
    ess = az.ess(_arviz.group(idata, "posterior"), method="bulk")
    return float(min(np.min(ess[v].to_numpy()) for v in ess.data_vars))


def flag_of(idata: Any) -> str:
    """Run pluralstan's diagnostics on the compared parameters and return its table flag."""
    diagnostics.check(idata, warn=False)
    return diagnostics.flag(idata)


def agreement_z(a: Any, b: Any) -> float:
    """Largest difference of posterior means in units of their combined Monte Carlo SE."""
    z = []
    pa, pb = _arviz.group(a, "posterior"), _arviz.group(b, "posterior")
    for v in pa.data_vars:
        if v not in pb:
            continue
        diff = pa[v].mean(("chain", "draw")) - pb[v].mean(("chain", "draw"))
        se = np.sqrt(az.mcse(pa[[v]], method="mean")[v] ** 2
                     + az.mcse(pb[[v]], method="mean")[v] ** 2)
        z.append(float(np.max(np.abs(diff / se))))
    return max(z)


def fit_row(target: str, case: str, run: Run, n: int, s: Settings, note: str = "") -> Row:
    """A table row for a sampling run (ESS, ESS/s, diagnostics flag)."""
    idata = posterior_of(run)
    ess = min_ess(idata)
    notes = [x for x in (note, flag_of(idata)) if x]
    steps = np.asarray(run.sample_stats["n_steps"], dtype=float)  # (chain, saved draw)
    return Row(target, case, run.engine, n, s.chains, s.draws, round(run.sample_seconds, 2),
               round(ess, 1), round(ess / run.sample_seconds, 2),
               grads_per_draw=round(float(steps.mean()), 1),
               ess_per_kgrad=round(1e3 * ess / float(steps.sum()), 2), note="; ".join(notes))


def with_gradient(row: Row, timing: StanTiming | float) -> Row:
    """Put a gradient time (ms) on ``row``, noting when it is below the timing resolution.

    A :class:`StanTiming` also notes the per-draw cost of generated quantities and output.
    """
    seconds = timing.gradient if isinstance(timing, StanTiming) else timing
    row.grad_ms = round(1e3 * seconds, 4)
    notes = [row.note]
    if seconds <= 0:
        notes.append("gradient below timing resolution")
    if isinstance(timing, StanTiming):
        notes.append(f"generated quantities + output {1e3 * timing.per_draw:.1f} ms per draw "
                     "(fixed_param, start-up included)")
    row.note = "; ".join(x for x in notes if x)
    return row


def compare(row: Row, ref: Row, ratio_is: str, goal: float) -> Row:
    """Set ``row``'s ratio to its ESS/s over ``ref``'s and score it against ``goal`` (>=)."""
    ratio = row.ess_per_s / ref.ess_per_s
    return replace(row, ratio=round(ratio, 2), ratio_is=ratio_is, goal=f">= {goal:g}",
                   meets="yes" if ratio >= goal else "no")


def same_posterior(a: Run, b: Run) -> str:
    """Note saying whether two runs' posterior means agree within Monte Carlo error."""
    z = agreement_z(posterior_of(a), posterior_of(b))
    verdict = "same posterior" if z <= AGREEMENT_Z else "POSTERIORS DIFFER"
    return f"{verdict}: max |mean diff| = {z:.1f} MCSE vs {a.engine}"


# ---------------------------------------------------------------------------- data
def row_data(comps: ps.Comparisons) -> dict[str, np.ndarray]:
    """Per-row arrays for the naive programs: option attributes and binary outcomes."""
    frame = comps.frame
    return {
        "A": frame[[f"a_{n}" for n in comps.attributes]].to_numpy(float),
        "B": frame[[f"b_{n}" for n in comps.attributes]].to_numpy(float),
        "y": (comps.outcome_codes() == 1).astype(np.int64),
    }


def naive_data(comps: ps.Comparisons, priors: dict[str, Any]) -> dict[str, Any]:
    """Stan data of ``naive_bt.stan`` with the aggregate model's priors."""
    rows = row_data(comps)
    return {"N": comps.n, "P": len(comps.attributes), **rows,
            "prior_theta_mean": priors["prior_theta_mean"],
            "prior_theta_sd": priors["prior_theta_sd"], "prior_only": 0}


def peer_data(model: str, comps: ps.Comparisons, enc: Encoded) -> dict[str, Any]:
    """The peers' data, taken from pluralstan's own encoding so all engines see the same data.

    ``aggregate``: the binomial cells pluralstan passes to Stan. ``annotator``: one row per
    judgement with its annotator code (the peers mix each annotator's summed log likelihood).
    ``annotator_cells`` (NumPyro only, target ``ahead``): the annotator program's own cells,
    distinct design rows and per-annotator sums of the linear part.
    """
    enc_data = enc.data
    sd = float(np.unique(enc_data["prior_theta_sd"])[0])
    mean = float(np.unique(enc_data["prior_theta_mean"])[0])
    if model == "aggregate":
        y = np.asarray(enc_data["y"])
        return {"X": enc.constant["X"], "n_a": y[:, 1], "n_total": y.sum(axis=1),
                "theta_mean": mean, "theta_sd": sd}
    if model == "annotator_cells":  # the Stan program's own cells (no ties, no order here)
        if enc_data["has_ties"] or enc_data["has_order"] or enc_data["X_sparse"]:
            raise ValueError("annotator_cells covers dense designs without ties or order")
        X, y = np.asarray(enc_data["X"]), np.asarray(enc_data["y"])
        row, ann = np.asarray(enc_data["row"]) - 1, np.asarray(enc_data["ann"]) - 1
        S = np.zeros((int(enc_data["I"]), X.shape[1]))
        np.add.at(S, ann, y[:, 1, None] * X[row])
        return {"X": X, "row": row, "ann": ann, "n_a": y[:, 1], "n_total": y.sum(axis=1),
                "S": S, "n_annotators": int(enc_data["I"]), "K": int(enc_data["K"]),
                "theta_mean": mean, "theta_sd": sd,
                "pi_alpha": float(np.unique(enc_data["prior_pi_alpha"])[0])}
    return {"X": comps.design(), "y": (comps.outcome_codes() == 1).astype(np.int64),
            "annotator": comps.codes("annotator"), "n_annotators": int(enc_data["I"]),
            "K": int(enc_data["K"]), "theta_mean": mean, "theta_sd": sd,
            "pi_alpha": float(np.unique(enc_data["prior_pi_alpha"])[0])}


def annotator_comps(n: int, s: Settings, per_annotator: int) -> ps.Comparisons:
    """High-conflict data with ``n`` judgements, ``per_annotator`` each (200 option pairs)."""
    with quiet():
        return ps.simulate.high_conflict(n_pairs=200, n_annotators=max(n // per_annotator, 2),
                                         pairs_per_annotator=per_annotator, seed=s.seed)


def peer_comps(s: Settings) -> ps.Comparisons:
    """Target 2's data (``s.peer_annotators`` x ``s.peer_pairs_per_annotator`` judgements)."""
    return annotator_comps(s.peer_annotators * s.peer_pairs_per_annotator, s,
                           s.peer_pairs_per_annotator)


# ---------------------------------------------------------------------------- targets
def target_sufficient_statistics(s: Settings) -> list[Row]:
    """Target 1: aggregate and labeled models vs naive per-row programs on Table 1 data."""
    comps = ps.simulate.high_conflict(n_pairs=s.n_pairs, n_annotators=s.n_annotators,
                                      seed=s.seed)
    case = f"Table 1 design: {s.n_pairs} pairs x {s.n_annotators} annotators"
    n = comps.n
    rows = []
    enc = get_model("aggregate").encode(comps)
    naive = run_program(program("naive_bt.stan"), naive_data(comps, enc.data), s,
                        "naive per-row Stan (bpcs style)")
    agg = run_registered("aggregate", comps, s, "pluralstan aggregate (cells)")
    ref = fit_row("1 sufficient statistics", case, naive, n, s, f"{n} Bernoulli rows")
    rows.append(ref)
    rows.append(compare(fit_row("1 sufficient statistics", case, agg, n, s,
                                f"{enc.data['C']} binomial cells; " + same_posterior(naive, agg)),
                        ref, "aggregate / naive ESS/s", 20))

    lab_enc = get_model("labeled").encode(comps, pooling="none")
    d = lab_enc.data
    lab_naive_data = {"N": n, "P": d["P"], "K": d["K"], **row_data(comps),
                      "g": comps.codes("group") + 1, "n_annotators": d["n_annotators"],
                      "prior_theta_mean": d["prior_theta_mean"],
                      "prior_theta_sd": d["prior_theta_sd"],
                      "prior_pi_alpha": d["prior_pi_alpha"], "prior_only": 0}
    lab_naive = run_program(program("naive_labeled_bt.stan"), lab_naive_data, s,
                            "naive per-row labeled Stan", observed_labels=True)
    lab = run_registered("labeled", comps, s, "pluralstan labeled (cells)", pooling="none")
    ref = fit_row("1 sufficient statistics", case, lab_naive, n, s, f"{n} Bernoulli rows")
    rows.append(ref)
    rows.append(compare(fit_row("1 sufficient statistics", case, lab, n, s,
                                f"{d['C']} binomial cells, pooling='none'; "
                                + same_posterior(lab_naive, lab)),
                        ref, "labeled / naive ESS/s", 20))
    return rows


def target_peers(s: Settings) -> list[Row]:
    """Target 2: aggregate and annotator-latent models vs NumPyro and PyMC."""
    comps = peer_comps(s)
    n = comps.n
    target = "2 vs other engines"
    rows = []
    for model, options in OPTIONS.items():
        case = f"{model}, {len(comps.annotator_levels)} annotators"
        enc = get_model(model).encode(comps, **options)
        ours = run_registered(model, comps, s, f"pluralstan {model} (PyStan)", **options)
        prog = get_model(model).program
        grad = stan_gradient_seconds(prog, enc.data, s.grad_draws, s.grad_repeats)
        ref = with_gradient(fit_row(target, case, ours, n, s), grad)
        rows.append(ref)
        if model in WITH_MEMBERSHIP:
            more = {**options, **WITH_MEMBERSHIP[model]}
            full = fit_row(target, case, run_registered(
                model, comps, s, f"pluralstan {model} (PyStan), membership kept", **more), n, s)
            ratio = full.ess_per_s / ref.ess_per_s
            rows.append(replace(full, ratio=round(ratio, 2),
                                ratio_is="ESS/s with membership output / without"))
        data = peer_data(model, comps, enc)
        for name in PEERS:
            peer = load_peer(name)
            if peer is None:
                rows.append(Row(target, case, name, n, note=f"skipped: {PEERS[name]} is not "
                                "installed (pip install 'pluralstan[bench]')"))
                continue
            other = run_peer(peer, model, data, s)
            row = with_gradient(fit_row(target, case, other, n, s, same_posterior(ours, other)),
                                peer.gradient_seconds(model, data))
            # the goal is pluralstan's ESS/s over the peer's: put it on the peer's row
            ratio = ref.ess_per_s / row.ess_per_s
            rows.append(replace(row, ratio=round(ratio, 2),
                                ratio_is=f"pluralstan / {name} ESS/s", goal=">= 1",
                                meets="yes" if ratio >= 1 else "no"))
    return rows


def target_engines(s: Settings) -> list[Row]:
    """Issue 22: the annotator and labeled models under PyStan and under cmdstanpy, same data.

    The cmdstanpy row's ratio is its ESS/s over PyStan's (no goal: the engines run the same Stan
    program, so the ratio is the engines' overhead and build, not the model's); its note says
    whether the two posteriors agree. Without a CmdStan the row says so and is skipped.
    """
    target = "engines"
    table1 = ps.simulate.high_conflict(n_pairs=s.n_pairs, n_annotators=s.n_annotators,
                                       seed=s.seed)
    peers = peer_comps(s)
    cases = {
        "annotator": (peers, OPTIONS["annotator"],
                      f"annotator K = 2, {len(peers.annotator_levels)} annotators"),
        "labeled": (table1, {"pooling": "none"},
                    f"labeled, Table 1 design: {s.n_pairs} pairs x {s.n_annotators} annotators"),
    }
    rows = []
    for model, (comps, options, case) in cases.items():
        ours = run_registered(model, comps, s, f"pluralstan {model} (PyStan)", **options)
        ref = fit_row(target, case, ours, comps.n, s)
        rows.append(ref)
        label = f"pluralstan {model} (cmdstanpy)"
        if not cmdstan_available():
            rows.append(Row(target, case, label, comps.n, note=(
                "skipped: no CmdStan is installed (python -m cmdstanpy.install_cmdstan, or "
                "point CMDSTAN at one)")))
            continue
        other = run_registered(model, comps, s, label, backend="cmdstanpy", **options)
        row = fit_row(target, case, other, comps.n, s, same_posterior(ours, other))
        rows.append(replace(row, ratio=round(row.ess_per_s / ref.ess_per_s, 2),
                            ratio_is="cmdstanpy / PyStan ESS/s"))
    return rows


def taxes_case(label: str) -> dict[str, ps.Comparisons | str]:
    """The tax conjoint under ``label``, or why it is skipped (the data set is absent)."""
    try:
        return {label: realdata.load_taxes()}
    except ps.PluralstanError as err:
        return {label: f"skipped: {err}"}


def geometry_cases(s: Settings) -> dict[str, ps.Comparisons | str]:
    """Target ``geometry``'s data: two simulated designs of ``s.geometry_groups`` groups (many
    judgements per group, then few) and, unless ``--quick``, the tax conjoint's three parties
    and Polis vTaiwan's three opinion groups (or why they are absent)."""
    rng = np.random.default_rng(s.seed)
    G, base = s.geometry_groups, np.array([1.0, -0.5, 0.3, 0.8, -1.0])
    thetas = base + 0.5 * rng.standard_normal((G, base.size))
    cases: dict[str, ps.Comparisons | str] = {}
    for each in s.geometry_judgements:
        comps = ps.simulate.mixture(thetas, np.full(G, 1 / G), n_pairs=400,
                                    n_annotators=20 * G, pairs_per_annotator=each, seed=s.seed)
        cases[f"simulated: {G} groups x 20 annotators x {each} judgements"] = comps
    if s.geometry_real:
        cases.update(taxes_case("tax conjoint: 3 parties, 25 attributes"))
        label = "Polis vTaiwan: 3 opinion groups, 109 statements"
        try:
            cases[label] = realdata.load_polis("vtaiwan.uberx")
        except ps.PluralstanError as err:
            cases[label] = f"skipped: {err}"
    return cases


#: Target ``geometry``'s parametrisations of the partially pooled labeled model, with their
#: sampler options, the first the reference of the others' ratios.
CENTRINGS: dict[str, dict[str, Any]] = {
    "non-centred": {}, "auto": {}, "conditional": {}, "conditional-low-rank": {}}

#: The same beyond ``labeled.CONDITIONAL_MAX_ATTRIBUTES`` attributes, where the whole-information
#: conditional form costs K P^3 per gradient: the default there against the non-centred form
#: at the ``adapt_delta`` the audit gave it (its default there before the low-rank form).
WIDE_CENTRINGS: dict[str, dict[str, Any]] = {
    "non-centred": {"adapt_delta": 0.95}, "conditional-low-rank": {}}


def target_geometry(s: Settings) -> list[Row]:
    """Issue 21, goal 2: the partially pooled labeled model, non-centred against data-chosen
    partial centring (``centring="auto"``, :func:`pluralstan.models.labeled.centring_weights`)
    and the conditional parametrisation with each group's whole pilot information
    (``centring="conditional"``, :func:`pluralstan.models.labeled.conditional_data`) and with
    its diagonal plus a low-rank correction (``"conditional-low-rank"``); beyond
    ``CONDITIONAL_MAX_ATTRIBUTES`` attributes only :data:`WIDE_CENTRINGS`.

    Same data, chains, warm-up and draws for each; a row's ratio is its ESS/s over the
    non-centred fit's, the note gives divergences, mean tree depth and the mean centring weight,
    and whether the posteriors agree.
    """
    from pluralstan.models.labeled import CONDITIONAL_MAX_ATTRIBUTES

    target, rows = "geometry", []
    for case, comps in geometry_cases(s).items():
        if isinstance(comps, str):
            rows.append(Row(target, case, "pluralstan labeled", note=comps))
            continue
        centrings = (WIDE_CENTRINGS if len(comps.attributes) > CONDITIONAL_MAX_ATTRIBUTES
                     else CENTRINGS)
        base, *others = (run_registered("labeled", comps, s, f"pluralstan labeled ({centring})",
                                        pooling="partial", centring=centring, **options)
                         for centring, options in centrings.items())
        ref = fit_row(target, case, base, comps.n, s, geometry_note(base))
        rows.append(ref)
        for centring, other in zip(list(centrings)[1:], others, strict=True):
            note = f"{geometry_note(other)}; {same_posterior(base, other)}"
            rows.append(compare(fit_row(target, case, other, comps.n, s, note), ref,
                                f"{centring} / non-centred ESS/s", 1.0))
    return rows


def geometry_note(run: Run) -> str:
    """Divergences, mean tree depth and mean centring weight of a labeled fit."""
    weights = run.extra["idata"].constant_data["centring"]
    return f"{depth_note(run)}, mean centring weight {float(weights.mean()):.2f}"


def whiten_fits(s: Settings, comps: ps.Comparisons) -> list[tuple[str, dict[str, Any]]]:
    """Target ``whiten``'s fits: the aggregate model, the annotator model with the
    large-data options of :data:`OPTIONS` at each K of ``s.whiten_K``, and, when the data
    carry observed groups, the unpooled labeled model (one basis per group)."""
    return [("aggregate", {}), *(("annotator", {**OPTIONS["annotator"], "K": K})
                                 for K in s.whiten_K),
            *((("labeled", {"pooling": "none"}),) if comps.has_groups else ())]


def whiten_cases(s: Settings) -> dict[str, ps.Comparisons | str]:
    """Target ``whiten``'s data: a simulated two-type conjoint, each option one level of a
    four-level and of a three-level factor (dummy coded, so a factor's columns are correlated),
    and, unless ``--quick``, the tax conjoint (or why it is absent)."""
    rng = np.random.default_rng(s.seed)
    n_annotators, each = 20 * s.n_annotators, 8
    levels = [np.eye(4)[:, 1:], np.eye(3)[:, 1:]]
    options = rng.integers(0, 12, (n_annotators * each, 2))
    coded = [np.hstack([levels[0][o % 4], levels[1][o // 4]]) for o in options.T]
    types = np.array([[1.0, 0.5, -0.5, 0.8, -0.4], [-0.6, 0.2, 1.0, -0.8, 0.6]])
    z = np.repeat(rng.integers(0, 2, n_annotators), each)
    eta = np.einsum("jp,jp->j", coded[0] - coded[1], types[z])
    names = ["f1=b", "f1=c", "f1=d", "f2=b", "f2=c"]
    frame = pd.concat([pd.DataFrame(coded[0], columns=[f"a_{x}" for x in names]),
                       pd.DataFrame(coded[1], columns=[f"b_{x}" for x in names])], axis=1)
    frame["y"] = (rng.random(eta.size) < 1 / (1 + np.exp(-eta))).astype(float)
    frame["annotator"] = np.repeat(np.arange(n_annotators), each)
    frame["group"] = z  # the types, observed, for the labeled fit
    cases: dict[str, ps.Comparisons | str] = {
        f"simulated conjoint: {n_annotators} annotators x {each}, two dummy-coded factors":
            ps.Comparisons.from_frame(frame, warn_unidentified=False)}
    if s.geometry_real:
        cases.update(taxes_case("tax conjoint: 1,925 respondents x 8, 25 attributes"))
    return cases


def target_whiten(s: Settings) -> list[Row]:
    """Issue 21, goal 1: the QR reparameterisation (``whiten``,
    :func:`pluralstan.models.base.whitening_data`) against sampling theta itself, on designs
    whose dummy-coded factors correlate the attributes.

    Same data, chains, warm-up and draws for both; the ratio is the whitened fit's ESS/s over
    the plain fit's, the note gives divergences and mean tree depth, and whether the two
    posteriors agree.
    """
    target, rows = "whiten", []
    for case, comps in whiten_cases(s).items():
        if isinstance(comps, str):
            rows.append(Row(target, case, "pluralstan", note=comps))
            continue
        for model, options in whiten_fits(s, comps):
            label = f"{case}; {model}" + (f" K = {options['K']}" if "K" in options else
                                          " by group, unpooled" if model == "labeled" else "")
            plain, white = (run_registered(model, comps, s, f"pluralstan {model} ({name})",
                                           whiten=whiten, **options)
                            for name, whiten in (("theta", False), ("whitened", True)))
            ref = fit_row(target, label, plain, comps.n, s, depth_note(plain))
            note = f"{depth_note(white)}; {same_posterior(plain, white)}"
            rows += [ref, compare(fit_row(target, label, white, comps.n, s, note), ref,
                                  "whitened / theta ESS/s", 1.0)]
    return rows


def depth_note(run: Run) -> str:
    """Divergences and mean tree depth of a fit."""
    return (f"{int(np.sum(run.sample_stats['diverging']))} divergences, mean tree depth "
            f"{float(np.mean(run.sample_stats['tree_depth'])):.2f}")


#: NumPyro programs of target ``ahead``: engine label -> peer model (:func:`peer_data`).
AHEAD_PEERS = {"numpyro (cells)": "annotator_cells", "numpyro (per judgement)": "annotator"}
#: Target ``ahead``'s PyStan run started as ``pluralstan audit`` starts its latent-type fits:
#: the multi-start mode search, every chain in the best mode, at most ``MODE_WARMUP`` warm-up
#: iterations (:func:`pluralstan.audit.search_options`); the search's seconds are counted.
AHEAD_SEARCHED = "PyStan, the audit's start"


def ahead_start_note(run: Run) -> str:
    """How a searched-start run began: its search's seconds and modes and its warm-up."""
    attrs = run.extra["idata"].posterior.attrs
    found = mode_search(attrs)
    return (f"mode search {found['seconds']:.1f} s ({len(found['modes'])} mode(s) from "
            f"{found['n_starts']} starts, counted), {attrs['warmup']} warm-up iterations")


def target_ahead(s: Settings) -> list[Row]:
    """Issue 21, goal 3: the annotator model's ESS/s against NumPyro's, warm-up counted.

    Target 2's data and model (1,000 annotators x 20 judgements, K = 2, :data:`OPTIONS`), at
    ``s.ahead_chains`` chains x ``s.ahead_draws`` warm-up iterations and as many draws, run
    ``s.ahead_repeats`` times with a new sampler seed each time (the data stay the same). Every
    repetition runs two NumPyro programs (:data:`AHEAD_PEERS`: the Stan program's own
    sufficient statistics, and target 2's per-judgement program), then PyStan, cmdstanpy
    (when a CmdStan is installed) and PyStan started as the audit starts
    (:data:`AHEAD_SEARCHED`: mode search counted, shorter warm-up), one after the other, so
    each ratio compares runs made under the same load. A pluralstan row's ratio is its ESS/s
    over the cells program's in the same repetition (the like-for-like comparison, and the
    goal's), its note the ratio over the per-judgement program's. Then one summary row per
    pluralstan run and NumPyro program: the median of the per-repetition ratios with their
    range; the cells rows are scored against the goal of 1 by the median.
    """
    target = "ahead of NumPyro"
    comps = peer_comps(s)
    model, options = "annotator", OPTIONS["annotator"]
    case = f"annotator K = 2, {len(comps.annotator_levels)} annotators"
    peer = load_peer("numpyro")
    if peer is None:
        return [Row(target, case, "numpyro", comps.n, note="skipped: numpyro is not installed "
                    "(pip install 'pluralstan[bench]')")]
    enc = get_model(model).encode(comps, **options)
    data = {label: peer_data(name, comps, enc) for label, name in AHEAD_PEERS.items()}
    from pluralstan.audit import search_options

    variants = {"PyStan": ("pystan", {})}
    if cmdstan_available():
        variants["cmdstanpy"] = ("cmdstanpy", {})
    variants[AHEAD_SEARCHED] = ("pystan", search_options())
    cells, per_judgement = AHEAD_PEERS
    rows = []
    ratios = {(b, label): [] for b in variants for label in AHEAD_PEERS}
    for r in range(s.ahead_repeats):
        rs = replace(s, chains=s.ahead_chains, warmup=s.ahead_draws, draws=s.ahead_draws,
                     seed=s.seed + r)
        rep = f"repetition {r + 1} of {s.ahead_repeats}, seed {rs.seed}"
        theirs = {}
        for label, name in AHEAD_PEERS.items():
            other = replace(run_peer(peer, name, data[label], rs), engine=label)
            theirs[label] = (other, fit_row(target, case, other, comps.n, rs, rep))
        for name, (backend, start) in variants.items():
            ours = run_registered(model, comps, rs, f"pluralstan {model} ({name})",
                                  backend=backend, **options, **start)
            row = fit_row(target, case, ours, comps.n, rs,
                          f"{rep}; {same_posterior(theirs[cells][0], ours)}"
                          + (f"; {ahead_start_note(ours)}" if start else ""))
            for label, (_, their_row) in theirs.items():
                ratios[name, label].append(row.ess_per_s / their_row.ess_per_s)
            rows.append(replace(
                row, ratio=round(ratios[name, cells][-1], 2),
                ratio_is=f"/ {cells} ESS/s, same repetition",
                note=f"{row.note}; / {per_judgement} ESS/s "
                     f"{ratios[name, per_judgement][-1]:.2f}"))
        rows += [their_row for _, their_row in theirs.values()]
    for (backend, label), values in ratios.items():
        median = float(np.median(values))
        scored = label == cells
        rows.append(Row(target, case, f"pluralstan {model} ({backend}) vs {label}", comps.n,
                        s.ahead_chains, s.ahead_draws, ratio=round(median, 2),
                        ratio_is=f"median ESS/s ratio over {len(values)} repetitions",
                        goal=">= 1" if scored else "",
                        meets=("yes" if median >= 1 else "no") if scored else "",
                        note=f"range {min(values):.2f}-{max(values):.2f}"))
    if not cmdstan_available():
        rows.append(Row(target, case, f"pluralstan {model} (cmdstanpy)", comps.n, note=(
            "skipped: no CmdStan is installed (python -m cmdstanpy.install_cmdstan, or point "
            "CMDSTAN at one)")))
    return rows


def target_scaling(s: Settings) -> list[Row]:
    """Target 3: annotator model at growing N; gradient, time per ESS, and peak memory.

    The largest size is fitted in a fresh process (:func:`memory_probe`), so that its peak
    memory is that fit's alone; the smaller ones are fitted here.
    """
    target = "3 scaling (annotator, K=2)"
    rows, base = [], None
    prog = get_model("annotator").program
    grads = {}
    for n in sorted(set(s.scaling_n) | set(s.profile_n)):
        comps = annotator_comps(n, s, per_annotator=10)
        enc = get_model("annotator").encode(comps, **OPTIONS["annotator"])
        grads[n] = (comps, enc, stan_gradient_seconds(prog, enc.data, s.grad_draws,
                                                      s.grad_repeats))
    for n in s.scaling_n:
        comps, enc, grad = grads[n]
        case = f"N = {comps.n}"
        note = f"{enc.data['I']} annotators, {enc.data['C']} cells"
        if n == max(s.scaling_n):
            probe = run_probe(["--memory-probe", str(n)], s)
            row, seconds = Row(**probe["row"]), probe["row"]["seconds"]
            row.case, row.note = case, "; ".join(x for x in (note, row.note) if x)
            rows.append(memory_row(n, s, probe))
        else:
            run = run_registered("annotator", comps, s, "pluralstan annotator (PyStan)",
                                 **OPTIONS["annotator"])
            row, seconds = fit_row(target, case, run, comps.n, s, note), run.sample_seconds
        row = with_gradient(row, grad)
        per_ess = seconds / row.min_ess_bulk
        if base is None:
            base = (comps.n, grad.gradient, per_ess)
        elif min(grad.gradient, base[1]) > 0:
            growth = comps.n / base[0]
            g_ratio = (grad.gradient / base[1]) / growth
            e_ratio = (per_ess / base[2]) / growth
            row = replace(row, ratio=round(g_ratio, 3),
                          ratio_is=f"grad-time growth / N growth (x{growth:g})", goal="<= 1",
                          meets="yes" if g_ratio <= 1 else "no")
            row.note += (f"; s per effective draw {per_ess:.3g} (growth / N growth "
                         f"{e_ratio:.3f})")
        rows.insert(len(rows) - (n == max(s.scaling_n)), row)
    return rows + gradient_profile(target, s, {n: grads[n] for n in s.profile_n})


def gradient_profile(target: str, s: Settings, grads: dict[int, tuple]) -> list[Row]:
    """Gradient time per judgement at every size of ``s.profile_n``, relative to the smallest.

    Every operation of the annotator program is linear in the cells, so the cost per judgement
    should be flat; this shows whether it is, size by size. (Timed on one core: see
    :func:`one_core` for the 1.2x step that unpinned timings showed at 5e4 and beyond.)
    """
    rows, base = [], None
    for comps, enc, grad in grads.values():
        per = grad.gradient / comps.n
        row = with_gradient(Row(target, f"gradient only, N = {comps.n}",
                                "pluralstan annotator (PyStan)", comps.n, 1, s.grad_draws,
                                note=f"{1e6 * per:.3f} us per judgement; {enc.data['C']} cells"),
                            grad)
        if base is None:
            base = per
        elif min(per, base) > 0:
            row = replace(row, ratio=round(per / base, 2),
                          ratio_is=f"gradient time per judgement / at N = {min(grads)}")
        rows.append(row)
    return rows + scaling_exponent(target, s, grads)


def scaling_exponent(target: str, s: Settings, grads: dict[int, tuple]) -> list[Row]:
    """The exponent b of gradient time ~ N^b, fitted over every size of the profile.

    Two sizes give a growth ratio that carries both timings' noise; a least-squares line through
    log time on log N at every profiled size (``scipy.stats.linregress``) uses them all, and its
    90% interval (Student t, sizes - 2 degrees of freedom) says how far the data pin the
    exponent down. Linear growth is b = 1; a fixed cost per gradient pulls b below 1 at small N.
    No row when fewer than three sizes have a positive gradient time.
    """
    timed = [(comps.n, grad.gradient) for comps, _, grad in grads.values() if grad.gradient > 0]
    if len(timed) < 3:
        return []
    n, t = np.array(timed, float).T
    line = stats.linregress(np.log(n), np.log(t))
    half = stats.t.ppf(0.95, len(n) - 2) * line.stderr
    return [Row(target, f"gradient time ~ N^b, N = {n.min():.0f}-{n.max():.0f}",
                "pluralstan annotator (PyStan)", int(n.max()), 1, s.grad_draws,
                ratio=round(line.slope, 3),
                ratio_is=f"b, log-log slope over {len(n)} sizes", goal="<= 1",
                meets="yes" if line.slope <= 1 else "no",
                note=f"90% interval [{line.slope - half:.3f}, {line.slope + half:.3f}]")]


def run_probe(args: list[str], s: Settings) -> dict[str, Any]:
    """Run this script in a fresh process with a probe option; return its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args,
           "--_settings", json.dumps(asdict(s))]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"probe {args} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: Peak-memory goals (GB) by size: issue 5's at 1e5 judgements, issue 21's at 1e6.
MEMORY_GOAL_GB = {100_000: 2.0, 1_000_000: 4.0}


def memory_row(n: int, s: Settings, probe: dict[str, Any]) -> Row:
    """The peak-memory row of the fit at ``n`` judgements made by :func:`memory_probe`."""
    peak = max(probe["maxrss_self_mb"], probe["maxrss_children_mb"]) / 1024
    goal = MEMORY_GOAL_GB[max([k for k in MEMORY_GOAL_GB if k <= n], default=min(MEMORY_GOAL_GB))]
    stored = (f"log_likelihood stored per annotator ({probe['log_lik_shape']}), never "
              "judgements x draws" if probe["log_lik_shape"] else "no log_likelihood stored")
    return Row("3 scaling (annotator, K=2)", f"peak memory, N = {n}",
               "pluralstan annotator (PyStan)", n, s.chains, s.draws,
               ratio=round(peak, 3), ratio_is="peak RSS (GB) of the largest process",
               goal=f"< {goal:g}", meets="yes" if peak < goal else "no",
               note=(f"Python peak {probe['maxrss_self_mb']:.0f} MB, sampler worker peak "
                     f"{probe['maxrss_children_mb']:.0f} MB; {stored}; "
                     f"options {OPTIONS['annotator']}"))


def memory_probe(n: int, s: Settings) -> None:
    """Body of the memory subprocess: fit, then print the row and peak memory as JSON.

    Peak memory is the kernel's peak resident set (``ru_maxrss``) of this process and of the
    sampler workers; nothing traces allocations, which would itself cost memory.
    """
    from httpstan import services_stub

    comps = annotator_comps(n, s, per_annotator=10)
    ensure_built(get_model("annotator").program)
    run = run_registered("annotator", comps, s, "pluralstan annotator (PyStan)",
                         **OPTIONS["annotator"])
    services_stub.executor.shutdown(wait=True)  # reap the sampler workers to read their peak
    row = fit_row("3 scaling (annotator, K=2)", "", run, comps.n, s)
    ll = _arviz.group(run.extra["idata"], "log_likelihood")
    mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    print(json.dumps({
        "row": asdict(row),
        "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mb,
        "maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * mb,
        "log_lik_shape": "x".join(map(str, ll["y"].shape)) if ll is not None else "",
    }))


def target_workflows(s: Settings) -> list[Row]:
    """Target 4: workflow scripts with a warm cache, and the pre-sampling overhead of a fit."""
    target = "4 workflows"
    rows = [overhead_row(s)]
    for script in ("high_conflict.py", "diversity_sweep.py"):
        path = REPO / "workflows" / script
        if not s.workflows:
            rows.append(Row(target, script, "script", note="skipped in --quick"))
            continue
        if not path.exists():
            rows.append(Row(target, script, "script", note=f"skipped: workflows/{script} does "
                            "not exist yet"))
            continue
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:  # outputs are not kept
                done = subprocess.run([sys.executable, str(path), "--out", tmp,
                                       *WORKFLOW_ARGS.get(script, ())],
                                      capture_output=True, text=True, cwd=REPO,
                                      timeout=WORKFLOW_TIMEOUT)
            note = "" if done.returncode == 0 else f"FAILED (exit {done.returncode}): " + \
                (done.stderr.strip().splitlines() or [""])[-1][:200]
        except subprocess.TimeoutExpired:
            note = f"stopped after {WORKFLOW_TIMEOUT} s"
        wall = time.perf_counter() - t0
        case = " ".join((script, *WORKFLOW_ARGS.get(script, ())))
        rows.append(Row(target, case, "script", seconds=round(wall, 1), note=note))
    scripts = [r for r in rows[1:] if r.seconds is not None and not r.note]
    if len(scripts) == 2:
        total = sum(r.seconds for r in scripts)
        rows.append(Row(target, "high_conflict.py + diversity_sweep.py", "scripts",
                        seconds=round(total, 1), ratio=round(total / 60, 2),
                        ratio_is="minutes, warm cache", goal="<= 5",
                        meets="yes" if total <= 300 else "no"))
    return rows


def overhead_row(s: Settings) -> Row:
    """Warm re-run of a fit: seconds before sampling starts (encode + build from the cache)."""
    comps = ps.simulate.high_conflict(n_pairs=s.n_pairs, n_annotators=s.n_annotators,
                                      seed=s.seed)
    small = replace(s, warmup=50, draws=50)
    run_registered("aggregate", comps, small, "warm-up fit")  # make sure the cache is warm
    t0 = time.perf_counter()
    get_model("aggregate").encode(comps)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = run_registered("aggregate", comps, small, "pluralstan aggregate")
    total = time.perf_counter() - t0
    idata = run.extra["idata"]
    before = encode_s + run.build_seconds
    return Row("4 workflows", "warm re-run of a fit", "pluralstan aggregate (PyStan)", comps.n,
               small.chains, small.draws, seconds=round(total, 2),
               ratio=round(before, 3), ratio_is="seconds before sampling starts",
               goal="< 2", meets="yes" if before < 2 else "no",
               note=(f"encode {encode_s:.3f} s + build from cache "
                     f"{idata.posterior.attrs['build_seconds']:.3f} s; after sampling "
                     f"(InferenceData, diagnostics) {total - before - run.sample_seconds:.2f} s"))


def target_threads(s: Settings) -> list[Row]:
    """Target 6: does ``reduce_sum`` run on several threads under PyStan, and does it pay?

    httpstan compiles every model with ``STAN_THREADS`` but never calls Stan's
    ``init_threadpool_tbb``, so ``STAN_NUM_THREADS`` is ignored and ``reduce_sum`` runs in
    TBB's default arena (all cores); its process pool also runs one chain per core. The
    measurement runs one chain in a subprocess and reports CPU seconds per wall second of the
    sampler worker: above 1 means the chain used several threads.
    """
    comps = ps.simulate.high_conflict(n_pairs=s.n_pairs, n_annotators=s.n_annotators,
                                      seed=s.seed)
    enc = get_model("aggregate").encode(comps)
    data = naive_data(comps, enc.data)
    rows, base = [], None
    for file_name, extra in (("naive_bt.stan", {}), ("naive_bt_reduce_sum.stan",
                                                      {"grainsize": 1})):
        grad = stan_gradient_seconds(program(file_name), {**data, **extra}, s.grad_draws,
                                     s.grad_repeats, pinned=False)
        probe = run_probe(["--thread-probe", file_name], s)
        row = with_gradient(Row("6 within-chain threads", f"naive BT, N = {comps.n}, 1 chain",
                                file_name.removesuffix(".stan"), comps.n, 1, s.draws,
                                seconds=round(probe["wall"], 2),
                                note=f"sampler worker: {probe['threads']} threads, "
                                f"{probe['cpu_per_wall']:.2f} CPU s per wall s of the fit"),
                            grad)
        if base is None:
            base = grad.gradient
        elif min(grad.gradient, base) > 0:
            speed_up = base / grad.gradient
            row = replace(row, ratio=round(speed_up, 2),
                          ratio_is="speed-up per gradient vs serial", goal="> 1 to pay",
                          meets="yes" if speed_up > 1 else "no")
        rows.append(row)
    return rows


def thread_probe(file_name: str, s: Settings) -> None:
    """Body of the thread subprocess: one chain; print wall and worker CPU time as JSON."""
    from httpstan import services_stub

    comps = ps.simulate.high_conflict(n_pairs=s.n_pairs, n_annotators=s.n_annotators,
                                      seed=s.seed)
    data = naive_data(comps, get_model("aggregate").encode(comps).data)
    if "reduce_sum" in file_name:
        data["grainsize"] = 1
    one = replace(s, chains=1)
    with quiet():  # the program is in the compile cache already (built by the parent)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        PyStanEngine().sample(program(file_name), data, config(one))
        wall = time.perf_counter() - t0
    # threads of each sampler worker while it is still alive: TBB starts its own worker
    # threads the first time reduce_sum runs in parallel (``_processes`` is the executor's
    # private pid -> process map; no public API lists the workers)
    threads = max(_thread_count(pid) for pid in services_stub.executor._processes)
    services_stub.executor.shutdown(wait=True)  # reap the worker so its CPU time is counted
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    print(json.dumps({"wall": wall, "cpu_per_wall": cpu / wall, "threads": threads}))


def _thread_count(pid: int) -> int:
    """Number of threads of process ``pid`` (Linux ``/proc``; 0 where unavailable)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def item_comps(n_items: int, s: Settings) -> ps.Comparisons:
    """Item data the size of target 2 (annotators x judgements each) over ``n_items`` items.

    Two equally common annotator types whose item abilities are independent standard normals;
    each judgement compares two distinct random items (a Polis-like design: reference coding
    gives ``n_items - 1`` design columns, two of them non-zero per judgement).
    """
    rng = np.random.default_rng(s.seed)
    n_ann, each = s.peer_annotators, s.peer_pairs_per_annotator
    ability = rng.normal(size=(2, n_items))
    kind = rng.integers(0, 2, n_ann).repeat(each)
    a = rng.integers(0, n_items, n_ann * each)
    b = (a + rng.integers(1, n_items, n_ann * each)) % n_items
    p_a = 1 / (1 + np.exp(ability[kind, b] - ability[kind, a]))
    frame = pd.DataFrame({"item_a": [f"i{k:03d}" for k in a], "item_b": [f"i{k:03d}" for k in b],
                          "y": (rng.random(len(a)) < p_a).astype(float),
                          "annotator": np.arange(n_ann).repeat(each)})
    with quiet():
        return ps.Comparisons.from_frame(frame)


def target_design_form(s: Settings) -> list[Row]:
    """The design's two forms (dense, compressed rows) on the annotator model, side by side.

    The same program and data, the design passed dense or sparse
    (:func:`pluralstan.models.base.design_data`): an item design with ``s.design_items`` items,
    where pluralstan picks the sparse form, and target 2's dense 5-attribute design, where it
    picks the dense one. The ratio is the gradient time of the other form over the chosen one's.
    """
    prog = get_model("annotator").program
    names = {1: "sparse (compressed rows)", 0: "dense"}
    rows = []
    cases = ((f"{s.design_items} items", item_comps(s.design_items, s)),
             ("5 attributes (target 2 data)", peer_comps(s)))
    for case, comps in cases:
        enc = get_model("annotator").encode(comps, **OPTIONS["annotator"])
        chosen = enc.data["X_sparse"]
        other = {**enc.data, **design_data(stan_design(enc.data), sparse=not chosen)}
        timings = {}
        size = (f"{enc.data['C']} cells x {enc.data['P']} columns, "
                f"{np.count_nonzero(enc.constant['X'])} non-zeros")
        for label, data in (("chosen by pluralstan", enc.data), ("forced", other)):
            timings[label] = stan_gradient_seconds(prog, data, s.grad_draws, s.grad_repeats)
            row = Row("sparse design (annotator, K=2)", case,
                      f"{names[data['X_sparse']]} design", comps.n, 1, s.grad_draws,
                      note=f"{label}; {size}")
            rows.append(with_gradient(row, timings[label]))
        if min(t.gradient for t in timings.values()) > 0:
            ratio = timings["forced"].gradient / timings["chosen by pluralstan"].gradient
            rows[-1] = replace(rows[-1], ratio=round(ratio, 2),
                               ratio_is="gradient time: this form / the chosen form",
                               goal="> 1", meets="yes" if ratio > 1 else "no")
    return rows


def target_compile_flags(s: Settings) -> list[Row]:
    """pluralstan's compiler flags and stanc options for PyStan builds against httpstan's own,
    side by side.

    The annotator program on target 2's data, built three times: with httpstan's flags and
    stanc call, then with :func:`pluralstan.engine.pystan_compile_args` added, then with
    :data:`pluralstan.engine.STANC_OPTIONS` added too (what pluralstan builds). The
    first two are its text with a trailing comment, so that each has a cache entry of its own.
    Each ratio is the gradient time of the build before over this one's.
    """
    prog = get_model("annotator").program
    comps = peer_comps(s)
    enc = get_model("annotator").encode(comps, **OPTIONS["annotator"])

    def variant(comment: str) -> StanProgram:
        return StanProgram(f"{prog.name}_{comment.replace(' ', '_')}",
                           f"{prog.code}\n// built with {comment}\n")

    builds = (("httpstan's flags", variant("httpstan's own flags"), (), ()),
              ("pluralstan's flags", variant("no stanc options"), pystan_compile_args(), ()),
              ("pluralstan's flags and stanc options", prog, pystan_compile_args(),
               STANC_OPTIONS))
    timings = [stan_gradient_seconds(program_, enc.data, s.grad_draws, s.grad_repeats,
                                     compile_args=args, stanc_options=options)
               for _, program_, args, options in builds]
    rows = []
    for (label, _, args, options), timing in zip(builds, timings, strict=True):
        note = " + ".join(["httpstan's own", *args]) + "; stanc " + " ".join(
            ["httpstan's own", *options])
        rows.append(with_gradient(Row("flags (annotator, K=2)", "5 attributes (target 2 data)",
                                      label, comps.n, 1, s.grad_draws, note=note), timing))
    for i, (earlier, later) in enumerate(pairwise(timings), start=1):
        if min(earlier.gradient, later.gradient) > 0:
            ratio = earlier.gradient / later.gradient
            rows[i] = replace(rows[i], ratio=round(ratio, 2),
                              ratio_is=f"gradient time: {builds[i - 1][0]} / these",
                              goal="> 1", meets="yes" if ratio > 1 else "no")
    return rows


def input_table(s: Settings) -> pd.DataFrame:
    """``input_n`` judgements over ``input_items`` items: 10 judgements per annotator, random
    pairs, ties and presentation order."""
    rng = np.random.default_rng(s.seed)
    n = s.input_n
    a = rng.integers(0, s.input_items, n)
    b = (a + rng.integers(1, s.input_items, n)) % s.input_items
    return pd.DataFrame({"annotator": np.arange(n) // 10, "item_a": a, "item_b": b,
                         "y": rng.choice([0.0, 0.5, 1.0], n, p=[0.45, 0.1, 0.45]),
                         "order": rng.integers(0, 2, n)})


def input_probe(s: Settings) -> None:
    """Body of the input-memory subprocess: validate and encode, print peak RSS and times.

    Peak memory is the kernel's peak resident set of the whole process (``ru_maxrss``: the
    imports, the table itself, validation and encoding), read without tracing allocations.
    """
    mb = 1 / 1024  # ru_maxrss is in KiB on Linux
    frame = input_table(s)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mb
    t0 = time.perf_counter()
    comps = ps.Comparisons.from_frame(frame)
    t1 = time.perf_counter()
    enc = get_model("aggregate").encode(comps)
    t2 = time.perf_counter()
    print(json.dumps({
        "validate_s": t1 - t0, "encode_s": t2 - t1, "before_mb": before,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mb,
        "cells": int(enc.data["C"]), "sparse": int(enc.data["X_sparse"]),
        "nnz": int(enc.data["X_nnz"]), "columns": int(enc.data["P"]),
    }))


def target_input(s: Settings) -> list[Row]:
    """Issue 23: peak memory and time of validating and encoding a large item table."""
    probe = run_probe(["--input-probe"], s)
    peak_gb = probe["maxrss_mb"] / 1024
    form = "compressed rows" if probe["sparse"] else "dense"
    return [Row("input memory (aggregate)",
                f"validate + encode, {s.input_n} judgements over {s.input_items} items",
                "pluralstan", s.input_n,
                seconds=round(probe["validate_s"] + probe["encode_s"], 2),
                ratio=round(peak_gb, 3), ratio_is="peak RSS (GB) of the process",
                goal="< 1", meets="yes" if peak_gb < 1 else "no",
                note=(f"validate {probe['validate_s']:.2f} s, encode {probe['encode_s']:.2f} s; "
                      f"RSS {probe['before_mb']:.0f} MB after imports and building the table; "
                      f"{probe['cells']} cells x {probe['columns']} columns, design in {form} "
                      f"({probe['nnz']} non-zeros)"))]


def audit_comps(n_annotators: int, each: int, seed: int) -> ps.Comparisons:
    """The audit issue's design: ``n_annotators`` x ``each`` judgements over 6 items, three
    annotator types whose shares depend on age and gender (an annotator table)."""
    rng = np.random.default_rng(seed)
    items = ["A", "B", "C", "D", "E", "F"]
    ability = 1.5 * np.array([[0, 1, 2, 0, -1, 1], [0, -1, -2, 1, 1, 0], [0, 2, 0, -2, 0, 1]])
    people = pd.DataFrame({"age": rng.uniform(18, 80, n_annotators).round(),
                           "gender": rng.choice(["female", "male"], n_annotators)},
                          index=pd.RangeIndex(n_annotators, name="annotator"))
    age = (people["age"].to_numpy() - 49) / 18
    logits = np.stack([age, -age, 0.5 * (people["gender"] == "female").to_numpy()], axis=1)
    p_type = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    kind = np.array([rng.choice(3, p=p) for p in p_type]).repeat(each)
    pairs = np.array([(a, b) for a in range(6) for b in range(a + 1, 6)])
    chosen = np.concatenate([rng.permutation(len(pairs))[:each] for _ in range(n_annotators)])
    a, b = pairs[chosen].T
    p_a = 1 / (1 + np.exp(ability[kind, b] - ability[kind, a]))
    frame = pd.DataFrame({"annotator": np.arange(n_annotators).repeat(each),
                          "item_a": np.array(items)[a], "item_b": np.array(items)[b],
                          "y": (rng.random(len(a)) < p_a).astype(float)})
    with quiet():
        return ps.Comparisons.from_frame(frame, annotators=people)


def sampling_note(summary: dict[str, Any]) -> str:
    """An audit summary's sampling seconds per fit, for a row's note."""
    return "sampling s per fit: " + ", ".join(f"{n} {v:.0f}"
                                              for n, v in summary["sample_seconds"].items())


def failed_note(summary: dict[str, Any]) -> str:
    """The fits of an audit summary whose diagnostics failed, for a row's note ("" if none)."""
    flags = [n for n, f in summary["diagnostics"].items() if f != "passed"]
    return f"; fits with failed diagnostics: {', '.join(flags)}" if flags else ""


def target_audit(s: Settings) -> list[Row]:
    """Issue 20: ``pluralstan audit`` (K = 1..4 and the covariate fit, 4 chains x 1000 draws,
    the command's defaults) on 200 annotators x 15 judgements over 6 items, warm cache."""
    from pluralstan.audit import audit

    n_ann, each = (200, 15) if s.workflows else (30, 15)
    comps = audit_comps(n_ann, each, s.seed)
    sampler = {} if s.workflows else {"chains": 2, "draws": 100, "warmup": 100}
    with quiet():  # compile (untimed) and warm the cache of every model the audit fits
        for model, K in (("aggregate", None), ("annotator", 2), ("covariate", 2)):
            ps.fit(model, comps, K=K, chains=1, draws=20, warmup=20, check=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = audit(comps, Path(tmp) / "report", progress=False, echo=lambda m: None,
                       **sampler)
        wall = time.perf_counter() - t0
    chains = sampler.get("chains", 4)
    return [Row("audit", f"{n_ann} annotators x {each} judgements, 6 items, K = 1..4 + "
                "covariate", "pluralstan audit (PyStan)", comps.n, chains,
                sampler.get("draws", 1000), seconds=round(wall, 1), ratio=round(wall / 60, 2),
                ratio_is="minutes, warm cache", goal="< 5",
                meets="yes" if wall < 300 else "no",
                note=f"K chosen {result.summary['K']['chosen']} (truth 3); "
                + sampling_note(result.summary) + failed_note(result.summary))]


def target_realdata(s: Settings) -> list[Row]:
    """Issue 21, goal 1: ``workflows/audit_datasets.py`` on each of ``s.realdata``, warm cache.

    Each data set is audited in a fresh process (the script at its defaults: K = 1..4, 4
    chains x 1000 draws; ``--quick`` in the quick settings), timed by wall clock; its peak
    memory is the kernel's peak resident set of that process and of the largest of its sampler
    workers (``ru_maxrss`` from ``wait4``, what ``/usr/bin/time`` reports). The note says
    where the time went: seconds per step and per fit, and each stored fit's gradients per
    draw and mean tree depth (:func:`fit_geometry`). The programs the audit fits are compiled
    first, untimed. A data set missing from the data folder gives a row that says so.
    """
    try:
        folder = realdata.data_dir()
    except ps.PluralstanError as err:
        return [Row("realdata", name, "pluralstan audit (PyStan)", note=f"skipped: {err}")
                for name in s.realdata]
    for model in ("annotator", "covariate", "labeled"):
        ensure_built(get_model(model).program)
    quick = ("--quick",) if not s.workflows else ()
    rows = []
    for name in s.realdata:
        if name == "personas":
            rows.append(personas_row(folder, s, quick))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(s.realdata_keep or tmp)
            wall, maxrss_kb, code, log = audit_process(
                [str(REPO / "workflows" / "audit_datasets.py"), "--datasets", name,
                 "--data", str(folder), "--out", str(out), *quick])
            summary_path = out / name / "audit.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
            geometry = fit_geometry(out / name / "fits")
        rows.append(realdata_row(name, wall, maxrss_kb / 2**20, code, log, summary, geometry))
    return rows


def personas_row(folder: Path, s: Settings, quick: tuple[str, ...]) -> Row:
    """The ``realdata`` row of ``workflows/audit_personas.py`` (aggregate, annotator and PAL
    fits of semi-synthetic persona users, with PAL's seen / unseen / few-shot predictions) at
    its defaults, timed and measured as :func:`target_realdata` does; the note gives each
    model's held-out accuracies and any failed diagnostics."""
    for program in (get_model("annotator").program, get_model("pal").program,
                    load_program("pal_new_users.stan")):
        ensure_built(program)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(s.realdata_keep or tmp) / "personas"
        wall, maxrss_kb, code, log = audit_process(
            [str(REPO / "workflows" / "audit_personas.py"), "--data", str(folder),
             "--out", str(out), *quick])
        table = pd.read_csv(out / "accuracy.csv") if code == 0 else None
        report = (out / "report.md").read_text() if code == 0 else ""
    label, engine = "personas (workflows/audit_personas.py)", "persona audit (PyStan)"
    if table is None:
        return failed_audit_row(label, engine, wall, code, log)
    accuracies = "; ".join(
        f"{model} " + ", ".join(f"{r.split} {r.accuracy:.3f}" for r in rows.itertuples())
        for model, rows in table.groupby("model", sort=False))
    failed = ", ".join(f"{model} {'/'.join(rows['split'])}" for model, rows in
                       table[table["diagnostics"] != "ok"].groupby("model", sort=False))
    n, chains, draws = map(int, re.search(
        r"(\d+) judgements by .*?; (\d+) chains x (\d+) draws", report).groups())
    return Row("realdata", f"{label}: {n} judgements", engine, n, chains, draws,
               **audit_goal(wall, maxrss_kb / 2**20), note=f"held-out accuracy: {accuracies}"
               + (f"; failed diagnostics: {failed}" if failed else ""))


def target_search(s: Settings) -> list[Row]:
    """Issue 21, goal 1: the mode search the audit runs before each latent-type fit, with its
    starts in one process against side by side in one worker process per core
    (:func:`pluralstan.modes.search`'s ``workers``).

    The annotator model at each K of ``s.search_K`` on the tax conjoint (target 2's data
    without ``s.geometry_real``, as in the quick settings, or when the data set is absent),
    with the audit's number of starts (:data:`pluralstan.audit.SEARCH_STARTS`) and seed. The
    two searches alternate ``s.search_repeats`` times and each keeps its fastest. The note says
    whether both found the same modes (they must: the starts are drawn before they are handed
    out).
    """
    from pluralstan.audit import SEARCH_STARTS
    from pluralstan.modes import search
    from pluralstan.parallel import default_workers

    case = "tax conjoint: 1,925 respondents x 8, 25 attributes"
    comps = taxes_case(case)[case] if s.geometry_real else None
    if not isinstance(comps, ps.Comparisons):
        case, comps = "target 2 data", peer_comps(s)
    spec = get_model("annotator")
    ensure_built(spec.program)
    workers = default_workers()
    rows = []
    for K in s.search_K:
        enc = spec.encode(comps, K=K)
        seconds: dict[int, float] = {}
        found = {}
        for _ in range(s.search_repeats):
            for n in (1, workers):
                t0 = time.perf_counter()
                found[n] = search(spec.program, enc.data, dims=enc.dims,
                                  label_dim=enc.label_dim, n_starts=SEARCH_STARTS, seed=s.seed,
                                  workers=n)
                seconds[n] = min(seconds.get(n, np.inf), time.perf_counter() - t0)
        same = [(m.log_density, m.starts) for m in found[1].modes] == [
            (m.log_density, m.starts) for m in found[workers].modes]
        note = (f"{SEARCH_STARTS} starts, {len(found[1].modes)} mode(s), "
                f"{found[1].failed} failed; the same modes: {'yes' if same else 'NO'}")
        label = f"{case}, annotator K = {K}"
        rows.append(Row("search", label, "mode search, one process", comps.n,
                        seconds=round(seconds[1], 3), note=note))
        ratio = seconds[1] / seconds[workers]
        rows.append(Row("search", label, f"mode search, {workers} worker processes", comps.n,
                        seconds=round(seconds[workers], 3), ratio=round(ratio, 2),
                        ratio_is="seconds: one process / worker processes", goal="> 1",
                        meets="yes" if ratio > 1 and same else "no", note=note))
    return rows


def target_laplace(s: Settings) -> list[Row]:
    """Issue 21, goal 1: chains started in the searched mode with unit scales of the program's
    coordinates against the mode's Laplace sds as scales
    (:func:`pluralstan.pipeline.search_inits`).

    The annotator model at each K of ``s.search_K`` and the covariate model at the largest,
    on the tax conjoint (target 2's data and no covariate fit without ``s.geometry_real``),
    as the audit fits them: its mode search, every chain in the best mode, its warm-up
    (:data:`pluralstan.audit.MODE_WARMUP`), ``s.ahead_chains`` chains of ``s.ahead_draws``
    draws. Both runs start from the same inits with the same seed, alternating; the warm-up is
    saved to count its leapfrog steps, which do not depend on the host. ``ratio``: all leapfrog
    steps (warm-up and draws) with unit scales over those with the Laplace scales.
    """
    import stan

    from pluralstan import pipeline
    from pluralstan.audit import LATENT_OPTIONS, MODE_WARMUP, SEARCH_STARTS

    case = "tax conjoint: 1,925 respondents x 8, 25 attributes"
    comps = taxes_case(case)[case] if s.geometry_real else None
    if not isinstance(comps, ps.Comparisons):
        case, comps = "target 2 data", peer_comps(s)
    fits = [("annotator", K) for K in s.search_K]
    if comps.annotators is not None:
        fits.append(("covariate", max(s.search_K)))
    rows = []
    for model, K in fits:
        spec = get_model(model)
        ensure_built(spec.program)
        enc = spec.encode(comps, K=K, **LATENT_OPTIONS)
        config, scaled, found = pipeline.search_inits(
            spec.program, enc, SamplerConfig(chains=s.ahead_chains, seed=s.seed),
            n_starts=SEARCH_STARTS, max_modes=1, mode_warmup=MODE_WARMUP)
        if found.modes[0].sd is None:
            rows.append(Row("laplace", f"{case}, {model} K = {K}", "PyStan", comps.n,
                            note="no Laplace sds (the Hessian at the mode is not negative "
                            "definite)"))
            continue
        unit, scaled_run = (laplace_run(stan, spec.program, data, config, s.ahead_draws)
                            for data in (enc.data, scaled.data))
        ratio = ((unit["warmup"] + unit["draws"])
                 / (scaled_run["warmup"] + scaled_run["draws"]))
        label = f"{case}, {model} K = {K}"
        rows.append(laplace_row(label, "unit scales", unit, comps.n, s))
        rows.append(laplace_row(label, "Laplace scales", scaled_run, comps.n, s,
                                ratio=round(ratio, 3),
                                ratio_is="leapfrog steps: unit scales / Laplace scales",
                                goal="> 1", meets="yes" if ratio > 1 else "no"))
    return rows


def laplace_row(case: str, scales: str, run: dict[str, Any], n: int, s: Settings,
                **score: Any) -> Row:
    """A :func:`target_laplace` row of one run (:func:`laplace_run`) with ``scales``;
    ``score``: the ratio columns of the Laplace run."""
    return Row("laplace", case, f"PyStan, mode search, {scales}", n, s.ahead_chains,
               s.ahead_draws, seconds=round(run["seconds"], 1), min_ess_bulk=round(run["ess"]),
               grads_per_draw=round(run["draws"] / (s.ahead_chains * s.ahead_draws), 1),
               note=(f"{run['iterations']} warm-up iterations; leapfrog steps in the warm-up "
                     f"{run['warmup']:.0f}, in the draws {run['draws']:.0f}; step sizes "
                     f"{run['steps']}; min_ess_bulk is lp__'s; {run['divergent']} divergent"),
               **score)


def laplace_run(stan: Any, program: Any, data: dict[str, Any], config: SamplerConfig,
                draws: int) -> dict[str, Any]:
    """One PyStan run of :func:`target_laplace`: seconds, warm-up iterations, leapfrog steps in
    the warm-up and in the draws, lp__'s bulk ESS, adapted step sizes and divergent
    transitions."""
    jsonable = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()}
    chains, warmup = config.chains, config.warmup
    with quiet(), discard_stored_fits():
        model = stan.build(program.code, data=jsonable, random_seed=config.seed)
        t0 = time.perf_counter()
        fit = model.sample(num_chains=chains, num_warmup=warmup, num_samples=draws,
                           save_warmup=True, init=config.inits)
        seconds = time.perf_counter() - t0
    leapfrog = np.asarray(fit["n_leapfrog__"]).reshape(warmup + draws, chains)
    lp = np.asarray(fit["lp__"]).reshape(warmup + draws, chains)[warmup:]
    step = np.asarray(fit["stepsize__"]).reshape(warmup + draws, chains)[-1]
    divergent = np.asarray(fit["divergent__"]).reshape(warmup + draws, chains)[warmup:]
    return {"seconds": seconds, "iterations": warmup, "warmup": float(leapfrog[:warmup].sum()),
            "draws": float(leapfrog[warmup:].sum()),
            "ess": min_ess(_arviz.make_idata(
                {"posterior": _arviz.dataset_from_dict({"lp": lp.T})})),
            "steps": ", ".join(f"{x:.3f}" for x in step), "divergent": int(divergent.sum())}


def fit_geometry(folder: Path) -> dict[str, tuple[float, float]]:
    """Gradients per draw and mean tree depth of each fit stored in ``folder`` (an audit's
    ``fits/``), by file name; only the sampler statistics are read."""
    out = {}
    for path in sorted(folder.glob("*.nc")):
        with xr.open_dataset(path, group="sample_stats", engine="h5netcdf") as sampler:
            out[path.stem] = (float(sampler["n_steps"].mean()),
                              float(sampler["tree_depth"].mean()))
    return out


def audit_process(args: list[str]) -> tuple[float, int, int, str]:
    """Run ``python *args`` with its output in a file; its wall seconds, peak resident set
    (KiB, its own or a child's, whichever is larger), exit status and the end of its output."""
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        return wall, usage.ru_maxrss, proc.returncode, log.read()[-2000:]


def failed_audit_row(label: str, engine: str, wall: float, code: int, log: str) -> Row:
    """The ``realdata`` row of an audit process that exited with ``code``: the end of its log."""
    return Row("realdata", label, engine, seconds=round(wall, 1),
               note=f"FAILED (exit {code}): " + (log.strip().splitlines() or [""])[-1][:200])


def audit_goal(wall: float, peak_gb: float) -> dict[str, Any]:
    """A ``realdata`` row's timing fields, scored against :data:`REALDATA_GOAL` (wall seconds
    and peak memory)."""
    minutes, gb = REALDATA_GOAL
    return dict(seconds=round(wall, 1), ratio=round(wall / 60, 2),
                ratio_is=f"minutes, warm cache; peak memory {peak_gb:.2f} GB",
                goal=f"< {minutes:g} min and < {gb:g} GB",
                meets="yes" if wall < 60 * minutes and peak_gb < gb else "no")


def realdata_row(name: str, wall: float, peak_gb: float, code: int, log: str,
                 summary: dict[str, Any] | None, geometry: dict[str, tuple[float, float]]) -> Row:
    """The ``realdata`` row of one audited data set (:func:`target_realdata`); ``geometry``:
    :func:`fit_geometry` of its stored fits."""
    if code != 0 or summary is None:
        return failed_audit_row(name, "pluralstan audit (PyStan)", wall, code, log)
    settings, data = summary["settings"], summary["data"]
    marks = " / ".join(v["mark"] for v in summary["verdicts"])
    steps = ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items())
    return Row("realdata", f"{name}: {data['judgements']} judgements by "
               f"{data['annotators']} annotators, K = {', '.join(map(str, settings['K']))}",
               "pluralstan audit (PyStan)", data["judgements"], settings["chains"],
               settings["draws"], **audit_goal(wall, peak_gb),
               note=f"K chosen {summary['K']['chosen']} by {summary['K']['method']}; marks "
               f"{marks}; steps (s) {steps}; " + sampling_note(summary)
               + ("; gradients per draw (mean tree depth): " + ", ".join(
                   f"{k} {g:.1f} ({d:.2f})" for k, (g, d) in geometry.items())
                  if geometry else "")
               + failed_note(summary))


TARGETS: dict[str, Callable[[Settings], list[Row]]] = {
    "1": target_sufficient_statistics,
    "2": target_peers,
    "3": target_scaling,
    "4": target_workflows,
    "6": target_threads,
    "sparse": target_design_form,
    "flags": target_compile_flags,
    "input": target_input,
    "audit": target_audit,
    "realdata": target_realdata,
    "search": target_search,
    "laplace": target_laplace,
    "engines": target_engines,
    "ahead": target_ahead,
    "geometry": target_geometry,
    "whiten": target_whiten,
}


# ---------------------------------------------------------------------------- output
def table(rows: list[Row]) -> pd.DataFrame:
    """The rows as a DataFrame with the documented columns."""
    return pd.DataFrame([asdict(r) for r in rows], columns=[f.name for f in fields(Row)])


def markdown(frame: pd.DataFrame, info: dict[str, Any], command: str) -> str:
    """The table as Markdown, headed by the machine and the command that produced it."""
    lines = [f"Command: `{command}`", "", "Machine: " + "; ".join(
        f"{k} {v}" for k, v in info.items()), ""]
    shown = frame.astype(object).where(frame.notna(), "")
    header = "| " + " | ".join(shown.columns) + " |"
    lines += [header, "|" + "---|" * len(shown.columns)]
    for _, r in shown.iterrows():
        cells = (str(v).replace("|", "\\|") for v in r.to_numpy())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(frame: pd.DataFrame, info: dict[str, Any], out: Path, command: str) -> None:
    """Write CSV, Markdown and machine JSON, each whole or not at all."""
    for name, text in (("benchmarks.csv", frame.to_csv(index=False)),
                       ("benchmarks.md", markdown(frame, info, command)),
                       ("machine.json", json.dumps(info, indent=2))):
        write_atomic(out / name, text)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds per target")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--draws", type=int, help="warm-up iterations and draws per chain "
                        "(default 500, --quick 100)")
    parser.add_argument("--scaling-n", type=int, nargs="+", help="target 3: sizes fitted (the "
                        "largest in its own process, for peak memory; default 1e3 1e4 1e5)")
    parser.add_argument("--profile-n", type=int, nargs="+", help="target 3: sizes whose "
                        "gradient is timed (default 1e3 to 1e5, seven sizes)")
    parser.add_argument("--realdata", nargs="+", choices=Settings.realdata,
                        help="target realdata: the data sets audited, 'personas' for "
                        "workflows/audit_personas.py (default all six)")
    parser.add_argument("--realdata-keep", type=Path, help="target realdata: keep each audit's "
                        "report folder here (default: deleted)")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--thread-probe", help=argparse.SUPPRESS)
    parser.add_argument("--input-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args._settings:
        raw = json.loads(args._settings)
        s = Settings(**{**raw, "scaling_n": tuple(raw["scaling_n"]),
                        "geometry_judgements": tuple(raw["geometry_judgements"]),
                        "whiten_K": tuple(raw["whiten_K"]),
                        "search_K": tuple(raw["search_K"]),
                        "realdata": tuple(raw["realdata"]),
                        "profile_n": tuple(raw["profile_n"])})
    if args.memory_probe:
        memory_probe(args.memory_probe, s)
        return 0
    if args.thread_probe:
        thread_probe(args.thread_probe, s)
        return 0
    if args.input_probe:
        input_probe(s)
        return 0
    if args.draws:
        s = replace(s, warmup=args.draws, draws=args.draws)
    if args.scaling_n:
        s = replace(s, scaling_n=tuple(args.scaling_n))
    if args.profile_n:
        s = replace(s, profile_n=tuple(args.profile_n))
    if args.realdata:
        s = replace(s, realdata=tuple(args.realdata))
    if args.realdata_keep:
        s = replace(s, realdata_keep=str(args.realdata_keep.resolve()))
    info = machine()
    command = "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows: list[Row] = []
    for key in args.targets:
        t0, load0 = time.perf_counter(), os.getloadavg()
        rows += TARGETS[key](s)
        wall, load1 = time.perf_counter() - t0, os.getloadavg()
        # the machine is shared: what else ran shows in the load average (1 and 5 minutes)
        info[f"target {key}"] = (f"{wall:.0f} s, load average 1m/5m {load0[0]:.1f}/{load0[1]:.1f}"
                                 f" at start, {load1[0]:.1f}/{load1[1]:.1f} at end")
        print(f"target {key} done in {wall:.0f} s", file=sys.stderr)
        write(table(rows), info, args.out, command.strip())  # keep what is done so far
    frame = table(rows)
    with pd.option_context("display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 60):
        print("Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
        shown = frame.astype(object).where(frame.notna(), "")
        print(shown.drop(columns=["note"]).to_string(index=False))
        print("\nNotes:")
        for _, r in frame[frame["note"] != ""].iterrows():
            print(f"  [{r['target']} | {r['case']} | {r['engine']}] {r['note']}")
    print(f"\nwritten to {args.out}/benchmarks.csv and benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
