"""Workarounds for httpstan behaviour pluralstan cannot change upstream, each in one place.

Every function here says which httpstan (or asyncio / ``concurrent.futures``) behaviour it works
around. :mod:`pluralstan.engine.pystan` uses them; :func:`install_worker_cleanup` is offered to
:mod:`pluralstan.parallel` through :mod:`pluralstan.engine`. Nothing else touches httpstan.

* :func:`httpstan_build`: httpstan builds with its own flags only and drops the compiler's
  messages on failure.
* :func:`build_apart`: httpstan compiles in a thread that Ctrl-C cannot stop, and
  ``asyncio.run`` waits for that thread before it lets the interrupt through.
* :func:`httpstan_stanc`: httpstan gives stanc one second and no options.
* :func:`discard_stored_fits`: httpstan keeps every fit on disk for good, and gives identical
  seeded requests (from other processes too) one stored fit.
* :func:`remove_socket_files`: httpstan leaves one ``httpstan_*.sock`` file in the temporary
  folder per sampling request.
* :func:`interruptible`: PyStan swallows Ctrl-C and returns ``None``; httpstan's workers ignore
  SIGINT and outlive the interrupted call, and the futures of a stopped pool are reported as
  never retrieved.
* :func:`install_worker_cleanup`: httpstan's non-daemonic chain pool blocks a
  ``multiprocessing`` worker's exit.
* :func:`split_data_once`: httpstan's log-density functions convert the whole data set,
  value by value, on every call.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import logging
import multiprocessing as mp
import multiprocessing.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import Interrupted, PluralstanError


def first_errors(log: str, lines: int = 12) -> str:
    """The compiler's first error lines (from the first ``error`` on), else the log's tail."""
    rows = log.splitlines()
    start = next((i for i, row in enumerate(rows) if "error" in row.lower()),
                 max(0, len(rows) - lines))
    return "\n".join(rows[start:start + lines])


@contextlib.contextmanager
def httpstan_build(extra_args: tuple[str, ...], program_name: str) -> Iterator[None]:
    """Let httpstan build an extension module with ``extra_args`` after its own flags.

    httpstan's ``build_services_extension_module`` hands its extension, carrying httpstan's own
    flags, to ``httpstan.build_ext.run_build_ext``. While this context is active that function is
    replaced by a copy of it that appends ``extra_args`` and keeps the compiler's messages when
    the build fails: httpstan's own drops them and reports only the compiler's exit status. A
    failure raises :class:`PluralstanError` with the compiler's first error lines.
    """
    import tempfile

    import httpstan.build_ext
    import setuptools
    import setuptools.command.build_ext

    def run_build_ext(extensions: list[Any], build_lib: str) -> str:
        dist = setuptools.Distribution()
        dist.parse_config_files(dist.find_config_files())
        command = setuptools.command.build_ext.build_ext(dist)
        command.build_lib = build_lib
        command.finalize_options()
        for extension in extensions:
            extension._needs_stub = False  # as httpstan does
            extension.extra_compile_args = [*extension.extra_compile_args, *extra_args]
        command.extensions = extensions
        failure: Exception | None = None
        with tempfile.TemporaryFile(prefix="pluralstan_build_") as log:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                command.run()
            except Exception as err:  # setuptools' CompileError / LinkError: no compiler text
                failure = err
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            output = log.read().decode(errors="replace")
        if failure is not None:
            flags = " ".join(extensions[0].extra_compile_args)
            raise PluralstanError(
                f"the C++ compiler failed on Stan program {program_name!r} (flags: {flags}):\n"
                f"{first_errors(output)}"
            ) from failure
        return output

    saved_run = httpstan.build_ext.run_build_ext
    httpstan.build_ext.run_build_ext = run_build_ext
    try:
        yield
    finally:
        httpstan.build_ext.run_build_ext = saved_run


def build_apart(build: Callable[[], str], what: str) -> str:
    """Run an extension-module build in a child process of its own process group.

    httpstan's ``build_services_extension_module`` runs the compiler in a thread of the default
    executor. Ctrl-C cancels the coroutine, but ``asyncio.run`` then shuts that executor down
    and waits for the thread, so a SIGINT sent to Python alone (``kill -INT``, a job manager)
    left the process compiling for about a minute, and the compiler running. Here the build runs
    in a forked child (which keeps the calling process's patches, such as
    :func:`httpstan_build`'s flags) that leads its own process group; Ctrl-C in this process
    stops that whole group (compiler driver, ``cc1plus``, assembler, linker) at once and raises
    :class:`~pluralstan.errors.Interrupted`. The caller removes what the build left.

    Returns
    -------
    str
        What ``build`` returned (the compiler's messages).
    """
    import signal

    context = mp.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        os.setpgrp()
        try:
            send.send((True, build()))
        except BaseException as err:  # every failure goes back to the caller
            try:
                send.send((False, err))
            except Exception:  # an exception that does not pickle
                send.send((False, PluralstanError(f"{what} failed: {err}")))

    process = context.Process(target=child, name="pluralstan-build")
    process.start()
    send.close()
    try:
        ok, value = receive.recv()
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.join()
        raise Interrupted(f"{what} interrupted (Ctrl-C); the compiler was stopped") from None
    except EOFError:  # the child died without a word (killed, out of memory)
        process.join()
        raise PluralstanError(f"{what} failed: the build process ended with exit code "
                              f"{process.exitcode}") from None
    finally:
        receive.close()
    process.join()
    if not ok:
        raise value
    return value


@contextlib.contextmanager
def httpstan_stanc(options: tuple[str, ...] = (), seconds: float = 600.0) -> Iterator[None]:
    """Run httpstan's stanc with ``options`` added and a long timeout while a program is built.

    httpstan runs stanc through ``subprocess.run([stanc, ..., "--print-cpp", file],
    timeout=1)``, with no way to pass options, and a loaded machine can exceed the timeout; its
    module-level ``subprocess`` reference is swapped for one whose ``run`` inserts ``options``
    before ``--print-cpp`` and waits up to ``seconds`` (httpstan.compile uses nothing else from
    ``subprocess``).
    """
    import subprocess
    import types

    import httpstan.compile

    def run(args: list[Any], *rest: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        at = args.index("--print-cpp")
        return subprocess.run([*args[:at], *options, *args[at:]], *rest,
                              timeout=max(timeout or 0.0, seconds), **kwargs)

    saved = httpstan.compile.subprocess
    httpstan.compile.subprocess = types.SimpleNamespace(run=run)
    try:
        yield
    finally:
        httpstan.compile.subprocess = saved


#: Fits named by this process's requests, per thread (see :func:`discard_stored_fits`).
_FIT_NAMES = threading.local()
#: Guards the one-time installation of the wrappers below.
_INSTALL_LOCK = threading.Lock()


def record_fit_names() -> None:
    """Replace httpstan's fit-name function (once per process) by :func:`_random_fit_name`,
    which gives every request a fit of its own and notes its name.

    httpstan names a seeded request's fit by hashing the request, so identical requests (the
    same program, data and seed, as several processes of a test or a parallel audit may post)
    share one stored fit, and the first to finish would delete the file another is still
    reading (:func:`discard_stored_fits`). httpstan names an unseeded request randomly; every
    request is named so here, so no stored fit is shared or reused. The seed stays in
    the arguments passed to Stan, so the draws do not change. httpstan has no public call that
    names a request's fit; its server runs in the calling thread's event loop, so a
    thread-local list collects the names of that thread's requests.
    """
    import httpstan.fits

    with _INSTALL_LOCK:
        if not getattr(httpstan.fits.calculate_fit_name, "pluralstan_records", False):
            httpstan.fits.calculate_fit_name = _random_fit_name


def _random_fit_name(function: str, model_name: str, kwargs: dict) -> str:
    """A random fit name, in the form httpstan gives an unseeded request's, noted for this
    thread. The bits come from the operating system, not from the ``random`` module that
    httpstan draws them from: a caller (Hypothesis, for one) may have seeded that module alike
    in several processes."""
    name = f"{model_name}/fits/{base64.b32encode(os.urandom(5)).decode().lower()}"
    names = getattr(_FIT_NAMES, "names", None)
    if names is not None:
        names.append(name)
    return name


_random_fit_name.pluralstan_records = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def discard_stored_fits() -> Iterator[None]:
    """Delete the fits httpstan stores for the sampling requests made inside the block.

    httpstan writes every fit (one file per chain) to its cache directory and keeps it for
    good. pluralstan returns the draws as InferenceData, so the stored copy is only disk use
    that grows with every fit (18 GB of them after two days of this project's tests, SBC runs
    and benchmarks). Each request's fit has a name of its own (:func:`record_fit_names`), so
    it is deleted once PyStan has read it.
    """
    import httpstan.cache

    record_fit_names()
    remove_socket_files()
    _FIT_NAMES.names = names = []
    try:
        yield
    finally:
        _FIT_NAMES.names = None
        for name in names:
            with contextlib.suppress(KeyError):  # never written (a failed request)
                httpstan.cache.delete_fit(name)


#: Socket files made by the httpstan request running in the current asyncio task.
_SOCKETS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "pluralstan_httpstan_sockets", default=None)


class _RecordingTempfile:
    """:mod:`tempfile` for httpstan's services module, noting the files ``mkstemp`` names."""

    def __getattr__(self, name: str) -> Any:
        return getattr(tempfile, name)

    def mkstemp(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = tempfile.mkstemp(*args, **kwargs)
        names = _SOCKETS.get()
        if names is not None:
            names.append(name)
        return fd, name


def remove_socket_files() -> None:
    """Delete each sampling request's Unix socket file when the request is done (installed once
    per process).

    httpstan's ``services_stub.call`` binds a socket to a fresh ``httpstan_*.sock`` name in the
    temporary folder for Stan's writers and never unlinks it, so every fit leaves a file behind
    (tens of thousands after a test suite). The wrapper notes the names its own request made
    (a context variable: each request runs as its own asyncio task) and unlinks them after the
    call, when the socket is closed.
    """
    import httpstan.services_stub as stub

    with _INSTALL_LOCK:
        if getattr(stub.call, "pluralstan_removes_sockets", False):
            return
        original = stub.call

        async def call(*args: Any, **kwargs: Any) -> Any:
            names: list[str] = []
            token = _SOCKETS.set(names)
            try:
                return await original(*args, **kwargs)
            finally:
                _SOCKETS.reset(token)
                for name in names:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)

        call.pluralstan_removes_sockets = True  # type: ignore[attr-defined]
        stub.call = call
        stub.tempfile = _RecordingTempfile()


T = TypeVar("T")


def terminate_workers(executor: Any) -> list[Any]:
    """Send SIGTERM to the worker processes of ``executor``; return them.

    ``ProcessPoolExecutor`` has no public call for this before Python 3.14
    (``terminate_workers``), so its process table is read.
    """
    try:
        processes = list((getattr(executor, "_processes", None) or {}).values())
    except RuntimeError:  # the table changed while it was read: the next call gets them
        return []
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.terminate()
    return processes


class _BrokenPoolNotRetrieved(logging.Filter):
    """Drop asyncio's "Future exception was never retrieved" for a broken process pool.

    httpstan polls the future of each chain's ``run_in_executor`` call and never awaits it.
    When :func:`stop_sampler_workers` terminates the workers while the event loop still runs,
    that future fails with ``BrokenProcessPool`` and, once garbage-collected (at any later
    time, even at exit), asyncio logs its traceback. It is a consequence of the Ctrl-C, which
    was reported once; installed on the ``asyncio`` logger once this process has stopped a
    pool, and only such records are dropped.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        import concurrent.futures.process

        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, concurrent.futures.process.BrokenProcessPool)
                    and record.getMessage().startswith("Future exception was never retrieved"))


_BROKEN_POOL_FILTER = _BrokenPoolNotRetrieved()


def stop_sampler_workers() -> None:
    """Stop httpstan's sampler processes and give httpstan a fresh pool for later fits.

    httpstan runs every chain in a worker of one module-level ``ProcessPoolExecutor`` whose
    workers ignore SIGINT. When Ctrl-C cancels PyStan's request the workers go on sampling (or
    block writing draws nobody reads), and the interpreter's exit waits for them: the command
    line hangs and the processes outlive it.
    """
    import concurrent.futures
    import multiprocessing

    import httpstan.services_stub as stub

    logging.getLogger("asyncio").addFilter(_BROKEN_POOL_FILTER)  # idempotent
    executor = stub.executor
    stub.executor = concurrent.futures.ProcessPoolExecutor(
        mp_context=multiprocessing.get_context("fork"), initializer=stub.init_worker
    )  # as httpstan makes its own
    for process in terminate_workers(executor):
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
    executor.shutdown(wait=False, cancel_futures=True)


class _AfterInterrupt(logging.Filter):
    """Drop the records httpstan's server and asyncio log while an interrupted call unwinds.

    Cancelling PyStan's request makes httpstan log its unfinished sampling tasks, and asyncio
    the tracebacks of their callbacks; they are consequences of the Ctrl-C, which is reported
    once as :class:`~pluralstan.errors.Interrupted`.
    """

    def __init__(self, interrupted: threading.Event) -> None:
        super().__init__()
        self.interrupted = interrupted

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.interrupted.is_set()


#: Loggers silenced while an interrupted PyStan call unwinds (see :class:`_AfterInterrupt`).
_UNWIND_LOGGERS = ("asyncio", "httpstan", "aiohttp.server", "aiohttp.web")


def _raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@dataclass
class _Interrupt:
    """Ctrl-C around one PyStan call: whether it came, whether the call is being stopped
    (further Ctrl-Cs then wait for the sampler processes to be stopped), whether the call is
    over, and the process that made the call (its forked sampler workers inherit the handler)."""

    seen: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    over: threading.Event = field(default_factory=threading.Event)
    pid: int = field(default_factory=os.getpid)


@contextlib.contextmanager
def sigint_stops_sampling() -> Iterator[_Interrupt]:
    """Let Ctrl-C stop a PyStan call promptly while the block runs.

    ``asyncio.run`` (which PyStan calls) answers SIGINT by cancelling its main task, which
    takes effect only when the event loop runs again; httpstan's loop relaying draws from the
    sampler processes gives the event loop no turn while draws keep arriving, so the
    cancellation waited for the chains to finish. Raising ``KeyboardInterrupt`` from the
    handler is no cure: wherever Python swallows exceptions (at-fork and ``__del__`` callbacks,
    both met while httpstan starts its workers) the interrupt is lost. So the first Ctrl-C
    terminates the sampler processes, which ends the relay, and schedules the
    ``KeyboardInterrupt`` as an event-loop callback, where it always propagates (raised at once
    when no event loop runs); until the call is over a thread goes on terminating any worker
    that httpstan was still starting. A second Ctrl-C raises at once. The handler is installed
    only over Python's default one, in the main thread (asyncio then installs none).
    """
    import asyncio
    import signal

    import httpstan.services_stub as stub

    state = _Interrupt()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield state
        return

    def keep_terminating() -> None:
        while not (state.stopping or state.over.wait(0.05)):
            terminate_workers(stub.executor)

    reaper = threading.Thread(target=keep_terminating, name="pluralstan-stop-sampler",
                              daemon=True)

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != state.pid:
            # a sampler worker httpstan is forking, before its initializer ignores SIGINT: a
            # KeyboardInterrupt here would be printed and ignored by an at-fork callback
            return
        first = not state.seen.is_set()
        state.seen.set()
        if state.stopping:
            return
        terminate_workers(stub.executor)
        if first:
            reaper.start()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if first and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(_raise_keyboard_interrupt)
            return
        raise KeyboardInterrupt

    quiet = _AfterInterrupt(state.seen)
    loggers = [logging.getLogger(name) for name in _UNWIND_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        state.over.set()
        if reaper.is_alive():
            reaper.join()
        for logger in loggers:
            logger.removeFilter(quiet)


def interruptible(call: Callable[[], T | None], what: str) -> T:
    """Run a PyStan call, turning Ctrl-C into :class:`~pluralstan.errors.Interrupted`.

    PyStan catches ``KeyboardInterrupt`` inside ``stan.build`` and ``Model.sample`` and returns
    ``None``. A ``None`` result, an interrupt that reaches here, or an error raised after
    Ctrl-C (httpstan reports the terminated processes as a failed fit) stops httpstan's sampler
    processes (:func:`stop_sampler_workers`) and raises :class:`Interrupted`.
    """
    with sigint_stops_sampling() as interrupt:
        try:
            result = call()
        except KeyboardInterrupt:
            result = None
        except Exception:
            if not interrupt.seen.is_set():
                raise
            result = None
        if result is None:
            interrupt.stopping = True
            stop_sampler_workers()
    if result is None:
        raise Interrupted(f"{what} interrupted (Ctrl-C); no sampler process is left running")
    return result


_CLEANUP_INSTALLED = False


def _shutdown_pool() -> None:
    """Stop httpstan's chain-process pool, if this process started one."""
    stub = sys.modules.get("httpstan.services_stub")
    if stub is not None:
        stub.executor.shutdown(wait=True, cancel_futures=True)


def install_worker_cleanup() -> None:
    """Make a worker process able to exit after it ran PyStan fits.

    httpstan runs chains in a module-level, non-daemonic process pool. A ``multiprocessing``
    child (a pool or Dask worker) exits through ``multiprocessing.util._exit_function``, which
    joins every live child *before* ``concurrent.futures`` would shut that pool down, so the
    worker waits forever for httpstan's idle chain processes. A finaliser with a non-negative
    exit priority runs before that join and shuts the pool down; its priority is above that of
    ``multiprocessing.Queue``'s own finalisers (10), which would otherwise stop the queue's feeder
    thread first and leave the shutdown sentinels undelivered. Idempotent.
    """
    global _CLEANUP_INSTALLED
    if not _CLEANUP_INSTALLED:
        mp.util.Finalize(None, _shutdown_pool, exitpriority=100)
        _CLEANUP_INSTALLED = True


#: Data sets whose conversion :func:`split_data_once` keeps: ``id(data) -> (data, split)``,
#: the most recent last. The dict itself is held, so an id cannot be reused while cached.
_SPLIT_CACHE: dict[int, tuple[dict[str, Any], tuple[list, ...]]] = {}
_SPLIT_CACHE_SIZE = 4


def split_data_once(data: dict[str, Any]) -> None:
    """Convert ``data`` for httpstan's log-density functions once, not on every call.

    httpstan's ``log_prob``, ``log_prob_grad``, ``write_array`` and ``transform_inits`` take
    the data as a dict and pass it, on every call, through ``httpstan.utils._split_data``,
    which flattens each array into a list of NumPy scalars that C++ then reads one by one. On
    data with hundreds of thousands of values (a sparse design of the tax conjoint) that
    conversion cost several times the gradient itself, and the mode search's L-BFGS calls
    these functions thousands of times. This registers ``data`` (the very dict object later
    passed to those functions): its conversion is made once, as plain Python lists, and
    returned for that object by a wrapper installed over ``_split_data``; any other dict goes
    to httpstan's own function. The last few registered data sets are kept.
    """
    import httpstan.utils

    original = getattr(httpstan.utils._split_data, "__wrapped__", httpstan.utils._split_data)
    split = tuple(list(part) for part in original(data))
    split[1][:] = np.asarray(split[1], dtype=float).tolist()  # plain floats and ints: C++
    split[4][:] = np.asarray(split[4], dtype=np.int64).tolist()  # casts them fastest
    _SPLIT_CACHE.pop(id(data), None)
    _SPLIT_CACHE[id(data)] = (data, split)
    while len(_SPLIT_CACHE) > _SPLIT_CACHE_SIZE:
        _SPLIT_CACHE.pop(next(iter(_SPLIT_CACHE)))
    if not hasattr(httpstan.utils._split_data, "__wrapped__"):
        httpstan.utils._split_data = _cached_split(original)


def _cached_split(original: Callable[[dict], tuple]) -> Callable[[dict], tuple]:
    def split_data(data: dict) -> tuple:
        hit = _SPLIT_CACHE.get(id(data))
        return hit[1] if hit is not None and hit[0] is data else original(data)

    split_data.__wrapped__ = original  # type: ignore[attr-defined]
    return split_data

