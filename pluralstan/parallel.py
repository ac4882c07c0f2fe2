"""Run many independent jobs (fits, SBC replicates, sweeps, pi grids) in parallel.

One function, :func:`run_jobs`, runs a list of :class:`Job` objects

* on a local **process pool** by default (``concurrent.futures`` with the ``spawn`` start method,
  so it is safe with PyStan's event loop and its own forked chain processes),
* on **Dask distributed** when ``scheduler`` is a scheduler address (``"tcp://host:8786"``) or a
  ``distributed.Client``, so a script that outgrows one machine runs unchanged on a cluster,
* in this process when ``scheduler="serial"`` (for debugging).

It shows progress (tqdm when installed, else one status line on stderr), isolates failures (a job
that raises is reported with its key and seed; the others carry on) and, given ``out_dir``, stores
each result as soon as it arrives, written whole (temporary file, then rename), so an interrupted
sweep resumes without redoing finished jobs.

Compiled Stan programs are reused, never rebuilt per job: ``warm=[(program, data), ...]`` builds
each program once before fanning out (in this process for the local pool, whose workers share
this machine's compile cache; on every worker for Dask, which may span machines). The engine's
per-program file lock makes concurrent builds on one machine compile once.

On a cluster, start a scheduler and workers (``dask scheduler``; ``dask worker tcp://host:8786
--nthreads 1`` on each machine, one thread per worker because every fit already runs its chains
in parallel processes) and pass ``scheduler="tcp://host:8786"``. Job functions must be importable
on the workers (install pluralstan there); stored results are pickles, so read ``out_dir`` only if
you trust who wrote it.

Examples
--------
>>> from pluralstan.parallel import Job, run_jobs                  # doctest: +SKIP
>>> jobs = [Job(f"seed{s}", my_fit, {"seed": s}, seed=s) for s in range(20)]  # doctest: +SKIP
>>> report = run_jobs(jobs, out_dir="runs/sweep", n_workers=2)      # doctest: +SKIP
>>> report.table()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import multiprocessing as mp
import multiprocessing.util
import os
import pickle
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .engine import SamplerConfig, StanProgram, get_engine, install_worker_cleanup
from .errors import Interrupted, PluralstanError
from .files import write_atomic

#: Job keys become file names: letters, digits, ``.``, ``_`` and ``-`` only.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Prefixes that mark ``scheduler`` as a Dask scheduler address.
DASK_PROTOCOLS = ("tcp://", "tls://", "inproc://", "ucx://", "ws://", "wss://")
#: Suffix of stored results and of failure notes in ``out_dir``.
RESULT_SUFFIX, ERROR_SUFFIX = ".pkl", ".error.txt"


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes
    ----------
    key
        Unique name; also the result's file name in ``out_dir`` (letters, digits, ``._-``).
    fn
        Module-level function (workers import it by name), called as ``fn(**kwargs)``.
    kwargs
        Keyword arguments; must pickle.
    seed
        The job's random seed, if it has one (reported with failures; not passed to ``fn``
        unless it is also in ``kwargs``).
    """

    key: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None

    def fingerprint(self) -> str:
        """SHA-256 of the function's name and the pickled arguments (detects stale results)."""
        payload = pickle.dumps((self.fn.__module__, self.fn.__qualname__, dict(self.kwargs),
                                self.seed), protocol=4)
        return hashlib.sha256(payload).hexdigest()


@dataclass
class JobResult:
    """Outcome of one job.

    Attributes
    ----------
    key, seed
        As in the :class:`Job`.
    value
        What ``fn`` returned (``None`` when it failed).
    error
        The formatted traceback when ``fn`` raised, else ``None``.
    seconds
        Wall time of the call in its worker.
    resumed
        Whether the value was read from ``out_dir`` instead of being computed this time.
    """

    key: str
    seed: int | None
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the job finished without raising."""
        return self.error is None

    @property
    def message(self) -> str:
        """One line naming the job, its seed and (for a failure) the exception."""
        seed = "" if self.seed is None else f" (seed {self.seed})"
        if self.ok:
            return f"job {self.key!r}{seed} ok"
        last = self.error.strip().splitlines()[-1] if self.error else "unknown error"
        return f"job {self.key!r}{seed} failed: {last}"


@dataclass
class RunReport:
    """Results of :func:`run_jobs`, in job order.

    Attributes
    ----------
    results
        Job key -> :class:`JobResult`.
    prebuilt
        Stan program name -> whether warming it up compiled it (False: it was cached).
    out_dir
        Where results were stored, if anywhere.
    """

    results: dict[str, JobResult]
    prebuilt: dict[str, bool] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether every job succeeded."""
        return all(r.ok for r in self.results.values())

    @property
    def failures(self) -> list[JobResult]:
        """The jobs that raised."""
        return [r for r in self.results.values() if not r.ok]

    @property
    def executed(self) -> list[str]:
        """Keys of the jobs that ran in this call (not read back from ``out_dir``)."""
        return [k for k, r in self.results.items() if not r.resumed]

    @property
    def resumed(self) -> list[str]:
        """Keys of the jobs whose stored results were reused."""
        return [k for k, r in self.results.items() if r.resumed]

    def values(self) -> dict[str, Any]:
        """Key -> value of every successful job."""
        return {k: r.value for k, r in self.results.items() if r.ok}

    def raise_failures(self) -> None:
        """Raise :class:`PluralstanError` listing every failed job (no-op when all succeeded)."""
        if self.failures:
            lines = "\n  ".join(r.message for r in self.failures)
            raise PluralstanError(f"{len(self.failures)} of {len(self.results)} jobs failed:\n"
                                  f"  {lines}")

    def table(self) -> pd.DataFrame:
        """One row per job: key, seed, ok, resumed, seconds and the error's last line."""
        return pd.DataFrame(
            [{"key": r.key, "seed": r.seed, "ok": r.ok, "resumed": r.resumed,
              "seconds": r.seconds,
              "error": None if r.ok else r.message.split(" failed: ", 1)[-1]}
             for r in self.results.values()]
        )


# --------------------------------------------------------------------------- worker side
def _pool_initializer(quiet: bool) -> None:
    """Set up a local pool worker: exit cleanly, and keep PyStan's progress lines quiet."""
    install_worker_cleanup()
    if quiet:
        devnull = open(os.devnull, "w")  # kept open for the life of the worker
        sys.stdout = sys.stderr = devnull


def execute(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> tuple[Any, str | None, float]:
    """Call ``fn(**kwargs)`` in a worker; never raises (the traceback travels back as text)."""
    install_worker_cleanup()
    t0 = time.perf_counter()
    try:
        value = fn(**kwargs)
    except Exception as err:  # isolate the failure: the other jobs carry on
        text = traceback.format_exc()
        hint = _daemon_hint(err)
        return None, text + (f"\n{hint}" if hint else ""), time.perf_counter() - t0
    return value, None, time.perf_counter() - t0


def _daemon_hint(err: BaseException) -> str | None:
    """Explain the error a daemonic (Dask nanny) worker gives when PyStan starts chain processes."""
    if isinstance(err, AssertionError) and "daemonic" in str(err):
        return ("PluralstanError: PyStan runs each chain in a child process, which daemonic Dask "
                "workers may not start; start the workers with the Dask setting "
                "distributed.worker.daemon = False (environment variable "
                "DASK_DISTRIBUTED__WORKER__DAEMON=False) or with threads (processes=False)")
    return None


def prebuild(program: StanProgram, data: Mapping[str, Any], backend: str = "auto") -> bool:
    """Compile ``program`` on this machine (if not cached) by a one-draw run on ``data``.

    Parameters
    ----------
    program
        The Stan program.
    data
        Any valid Stan data for it (e.g. ``spec.encode(comps).data``).
    backend
        Engine name, as in :func:`pluralstan.engine.get_engine`.

    Returns
    -------
    bool
        Whether this call compiled the program (False: it was already in the cache).
    """
    install_worker_cleanup()
    config = SamplerConfig(chains=1, draws=1, warmup=20, seed=1)  # 20: no adaptation warning
    sink = io.StringIO()
    try:
        with contextlib.ExitStack() as stack:
            # the one-draw run's progress lines are noise; redirecting the process-wide streams
            # is only safe from the main thread (Dask thread workers share them)
            if threading.current_thread() is threading.main_thread():
                stack.enter_context(contextlib.redirect_stdout(sink))
                stack.enter_context(contextlib.redirect_stderr(sink))
            return bool(get_engine(backend).sample(program, dict(data), config).compiled)
    except AssertionError as err:
        hint = _daemon_hint(err)
        if hint:
            raise PluralstanError(hint.removeprefix("PluralstanError: ")) from err
        raise


# --------------------------------------------------------------------------- storage
def _result_path(out_dir: Path, key: str) -> Path:
    return out_dir / f"{key}{RESULT_SUFFIX}"


def _store(out_dir: Path, job: Job, result: JobResult) -> None:
    """Keep a success (pickle with its fingerprint) or a failure note (text, rerun on resume)."""
    error_path = out_dir / f"{job.key}{ERROR_SUFFIX}"
    if result.ok:
        payload = {"fingerprint": job.fingerprint(), "value": result.value,
                   "seconds": result.seconds, "seed": job.seed}
        write_atomic(_result_path(out_dir, job.key), pickle.dumps(payload, protocol=4))
        error_path.unlink(missing_ok=True)
    else:
        write_atomic(error_path, f"{result.message}\n\n{result.error}".encode())


def _load_stored(out_dir: Path, job: Job) -> JobResult | None:
    """A stored result for ``job`` if one exists and was made by the same function and arguments.

    Stored results are pickles: read them only from folders you trust.
    """
    path = _result_path(out_dir, job.key)
    if not path.is_file():
        return None
    try:
        payload = pickle.loads(path.read_bytes())
    except Exception:  # a file from elsewhere or an older format: recompute it
        return None
    if not isinstance(payload, dict) or payload.get("fingerprint") != job.fingerprint():
        return None
    return JobResult(job.key, job.seed, payload["value"], None, payload.get("seconds", 0.0),
                     resumed=True)


# --------------------------------------------------------------------------- progress
class _Progress:
    """tqdm when it is installed, else a status line rewritten on stderr."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool) -> None:
        self.total, self.done, self.failed, self.desc = total, done, 0, desc
        self.enabled, self.t0, self.bar = enabled and total > 0, time.perf_counter(), None
        if not self.enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._line()
        else:
            self.bar = tqdm(total=total, initial=done, desc=desc, file=sys.stderr, unit="job")

    def update(self, result: JobResult) -> None:
        self.done += 1
        self.failed += int(not result.ok)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        else:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self.t0
        end = "\n" if self.done == self.total else ""
        print(f"\r{self.desc}: {self.done}/{self.total} done, {self.failed} failed, "
              f"{elapsed:.1f} s", end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- runner
def _check_jobs(jobs: Sequence[Job]) -> None:
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise PluralstanError(f"jobs[{i}] is a {type(job).__name__}, not a pluralstan Job")
        if not isinstance(job.key, str) or not KEY_PATTERN.match(job.key):
            raise PluralstanError(
                f"jobs[{i}] has key {job.key!r}; keys name result files, so use letters, "
                "digits, '.', '_' and '-' only, starting with a letter or digit"
            )
        if job.key in seen:
            raise PluralstanError(f"job key {job.key!r} is used twice (jobs[{i}]); keys must "
                                  "be unique")
        if not callable(job.fn):
            raise PluralstanError(f"job {job.key!r}: fn must be callable, got {job.fn!r}")
        seen.add(job.key)


def _is_dask(scheduler: Any) -> bool:
    if isinstance(scheduler, str):
        return scheduler.startswith(DASK_PROTOCOLS)
    return type(scheduler).__name__ == "Client" and hasattr(scheduler, "submit")


def default_workers() -> int:
    """Number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        return os.cpu_count() or 1


def run_jobs(
    jobs: Iterable[Job],
    *,
    out_dir: str | Path | None = None,
    n_workers: int | None = None,
    scheduler: Any = None,
    warm: Sequence[tuple[StanProgram, Mapping[str, Any]]] = (),
    backend: str = "auto",
    progress: bool = True,
    quiet: bool = True,
    desc: str = "jobs",
) -> RunReport:
    """Run independent jobs in parallel, isolating failures and storing results per job.

    Parameters
    ----------
    jobs
        The :class:`Job` objects (unique keys).
    out_dir
        Folder for one result file per job (``<key>.pkl``, written whole). Jobs whose stored
        result was made by the same function and arguments are not run again; failed jobs leave
        ``<key>.error.txt`` and run again next time. ``None``: keep results in memory only.
    n_workers
        Size of the pool made for this call (default: the number of cores). Ignored when
        ``scheduler`` is an executor or Dask (they decide).
    scheduler
        ``None`` or ``"processes"``: a local process pool for this call. ``"serial"``: run in
        this process. A ``concurrent.futures.Executor`` you keep (e.g. :func:`local_pool`):
        run on it and leave it open. A Dask scheduler address (``"tcp://..."``) or a
        ``distributed.Client``: run on Dask.
    warm
        ``(program, data)`` pairs to build before fanning out, so that no worker compiles: in
        this process for the local pool; on every worker for Dask.
    backend
        Engine used for ``warm`` (jobs choose their own).
    progress
        Show progress on stderr.
    quiet
        Silence what local pool workers print (PyStan's per-fit progress lines); errors still
        come back in the results. Dask workers' output goes to their own logs.
    desc
        Label of the progress display.

    Returns
    -------
    RunReport
        Per-job results in job order; ``report.raise_failures()`` turns failures into an error.

    Raises
    ------
    Interrupted
        On Ctrl-C: jobs not started are cancelled, the workers of a pool made for this call
        are stopped (an executor you passed is left to you), and the message says how many
        jobs finished; with ``out_dir`` their results are stored, and the same call resumes.
    """
    jobs = list(jobs)
    _check_jobs(jobs)
    if n_workers is not None and int(n_workers) < 1:
        raise PluralstanError(f"n_workers must be a positive integer, got {n_workers!r}")
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, JobResult | None] = {job.key: None for job in jobs}
    todo = []
    for job in jobs:
        stored = _load_stored(folder, job) if folder is not None else None
        if stored is None:
            todo.append(job)
        else:
            results[job.key] = stored
    bar = _Progress(len(jobs), len(jobs) - len(todo), desc, progress)

    def finish(job: Job, value: Any, error: str | None, seconds: float) -> None:
        result = JobResult(job.key, job.seed, value, error, seconds)
        if folder is not None:
            _store(folder, job, result)
        results[job.key] = result
        bar.update(result)

    try:
        if _is_dask(scheduler):
            prebuilt = _run_dask(todo, scheduler, warm, backend, finish)
        elif scheduler in (None, "processes", "serial") or isinstance(scheduler, cf.Executor):
            prebuilt = {p.name: prebuild(p, d, backend) for p, d in warm} if todo else {}
            if scheduler == "serial":
                for job in todo:
                    finish(job, *execute(job.fn, job.kwargs))
            elif isinstance(scheduler, cf.Executor):
                _run_executor(todo, scheduler, finish)
            elif todo:
                with local_pool(min(n_workers or default_workers(), len(todo)),
                                quiet=quiet) as pool:
                    _run_executor(todo, pool, finish, own=True)
        else:
            raise PluralstanError(
                f"scheduler {scheduler!r} not understood; accepted: None or 'processes' (local "
                "process pool), 'serial', a concurrent.futures.Executor, a Dask scheduler "
                "address such as 'tcp://host:8786', or a distributed.Client"
            )
    except KeyboardInterrupt:
        done = sum(r is not None for r in results.values())
        kept = (f"; their results are stored in {folder}, and the same call resumes from them"
                if folder is not None and done else "")
        raise Interrupted(f"interrupted (Ctrl-C) after {done} of {len(jobs)} jobs{kept}"
                          ) from None
    finally:
        bar.close()
    return RunReport({k: r for k, r in results.items() if r is not None}, prebuilt, folder)


def local_pool(n_workers: int | None = None, *, quiet: bool = True) -> cf.ProcessPoolExecutor:
    """A local process pool set up for Stan fits, to reuse across several :func:`run_jobs` calls.

    Starting workers costs an interpreter and the pluralstan / PyStan imports each; a pool you
    keep (``with local_pool(2) as pool: run_jobs(..., scheduler=pool)``) pays that once.

    Parameters
    ----------
    n_workers
        Number of worker processes (default: the number of cores).
    quiet
        Silence what workers print (PyStan's per-fit progress lines).
    """
    if n_workers is not None and int(n_workers) < 1:
        raise PluralstanError(f"n_workers must be a positive integer, got {n_workers!r}")
    return cf.ProcessPoolExecutor(max_workers=int(n_workers or default_workers()),
                                  mp_context=mp.get_context("spawn"),
                                  initializer=_pool_initializer, initargs=(quiet,))


def _run_executor(todo: Sequence[Job], executor: cf.Executor,
                  finish: Callable[[Job, Any, str | None, float], None], *,
                  own: bool = False) -> None:
    """Submit every job to a ``concurrent.futures`` executor and collect them as they finish.

    On Ctrl-C the jobs not started are cancelled and, when this call made the pool (``own``),
    its workers are stopped, so that leaving the pool does not wait for the running jobs."""
    futures = {executor.submit(execute, job.fn, job.kwargs): job for job in todo}
    try:
        for future in cf.as_completed(futures):
            job = futures[future]
            try:
                value, error, seconds = future.result()
            except Exception:  # the worker process itself died (e.g. a crash in C++ code)
                value, error, seconds = None, traceback.format_exc(), 0.0
            finish(job, value, error, seconds)
    except KeyboardInterrupt:
        for future in futures:
            future.cancel()
        if own and isinstance(executor, cf.ProcessPoolExecutor):
            _stop_workers(executor)
        raise


def _stop_workers(pool: cf.ProcessPoolExecutor, timeout: float = 30.0,
                  interval: float = 2.0) -> None:
    """Interrupt a process pool's workers until they have left.

    Each live worker gets SIGINT, as a terminal's Ctrl-C gives it, every ``interval`` seconds:
    a running fit then stops its sampler processes and raises
    :class:`~pluralstan.errors.Interrupted`; a task the pool had already queued (which
    ``cancel`` cannot reach) is interrupted in turn; an idle worker leaves, shutting its
    sampler pool down on the way out. A worker still alive after ``timeout`` seconds is
    terminated. ``concurrent.futures`` has no public way to reach running tasks (``shutdown``
    cancels only the pending ones), so this reads the pool's ``_processes`` table, which
    CPython has kept under that name since 3.2.
    """
    workers = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [w for w in workers if w.is_alive()]
        if not alive:
            return
        for worker in alive:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(worker.pid, signal.SIGINT)
        for worker in alive:
            worker.join(timeout=interval / len(alive))
    for worker in workers:
        if worker.is_alive():
            worker.terminate()


def _run_dask(todo: Sequence[Job], scheduler: Any,
              warm: Sequence[tuple[StanProgram, Mapping[str, Any]]], backend: str,
              finish: Callable[[Job, Any, str | None, float], None]) -> dict[str, bool]:
    """Dask distributed: warm every worker, submit, collect as completed."""
    try:
        from distributed import Client, as_completed
    except ImportError as err:
        raise PluralstanError(
            "running on Dask needs the 'distributed' package: pip install 'dask[distributed]'"
        ) from err
    own = isinstance(scheduler, str)
    client = Client(scheduler) if own else scheduler
    try:
        prebuilt: dict[str, bool] = {}
        if todo:
            # one build task pinned to each worker (client.run would call PyStan inside the
            # worker's event loop, where it cannot start its own)
            workers = list(client.scheduler_info()["workers"])
            for program, data in warm:
                builds = [client.submit(prebuild, program, dict(data), backend, workers=[w],
                                        allow_other_workers=False, pure=False,
                                        key=f"pluralstan-build-{uuid.uuid4().hex[:8]}")
                          for w in workers]
                prebuilt[program.name] = any(client.gather(builds))
        futures = {
            client.submit(execute, job.fn, dict(job.kwargs), pure=False,
                          key=f"pluralstan-{job.key}-{uuid.uuid4().hex[:8]}"): job
            for job in todo
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                value, error, seconds = future.result()
            except Exception:  # worker lost or result not deserialisable
                value, error, seconds = None, traceback.format_exc(), 0.0
            finish(job, value, error, seconds)
            future.release()
        return prebuilt
    finally:
        if own:
            client.close()
