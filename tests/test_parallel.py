"""The parallel runner: process pool, Dask LocalCluster, failure isolation, resume, no recompiles.

Job functions live at module level so that spawned pool workers can import them by name.
"""

from __future__ import annotations

import numpy as np
import pytest

import pluralstan as ps
from pluralstan.models import get_model
from pluralstan.parallel import ERROR_SUFFIX, RESULT_SUFFIX, Job, run_jobs


def small_fit(seed: int) -> dict:
    """Fit the aggregate model to a small simulated data set; report what the fit recorded."""
    comps = ps.simulate.bt([1.0, -1.0], n_pairs=20, judgements_per_pair=5, seed=seed)
    idata = ps.fit("aggregate", comps, chains=2, draws=100, warmup=100, seed=seed, check=False)
    return {"compiled": int(idata.posterior.attrs["compiled"]),
            "theta_mean": idata.posterior["theta"].mean(("chain", "draw")).to_numpy()}


def broken_fit(seed: int) -> dict:
    """A job that fails the way bad input does."""
    raise ps.PluralstanError(f"simulated failure for seed {seed}")


def square(x: float) -> float:
    return x * x


@pytest.fixture(scope="module")
def warm():
    """What the runner builds before fanning out: the aggregate program and valid data for it."""
    spec = get_model("aggregate")
    comps = ps.simulate.bt([1.0, -1.0], n_pairs=5, judgements_per_pair=2, seed=0)
    return [(spec.program, spec.encode(comps).data)]


def fit_jobs() -> list[Job]:
    jobs = [Job(f"fit-{s}", small_fit, {"seed": s}, seed=s) for s in (1, 2, 3)]
    return [*jobs, Job("fit-bad", broken_fit, {"seed": 99}, seed=99)]


def check_fits(report) -> None:
    """Three fits succeeded without compiling; the broken job is reported with key and seed."""
    assert [r.key for r in report.failures] == ["fit-bad"]
    message = report.failures[0].message
    assert "fit-bad" in message and "seed 99" in message
    assert "simulated failure for seed 99" in message
    values = report.values()
    assert sorted(values) == ["fit-1", "fit-2", "fit-3"]
    # every worker found the program built: none recompiled
    assert [v["compiled"] for v in values.values()] == [0, 0, 0]
    for v in values.values():
        assert v["theta_mean"].shape == (2,) and np.all(np.isfinite(v["theta_mean"]))
    with pytest.raises(ps.PluralstanError, match=r"1 of 4 jobs failed:\n  job 'fit-bad'"):
        report.raise_failures()


def test_process_pool_isolates_failures_stores_and_resumes(tmp_path, warm):
    first = run_jobs(fit_jobs(), out_dir=tmp_path, n_workers=2, warm=warm, progress=False)
    check_fits(first)
    assert first.prebuilt == {"aggregate_bt": first.prebuilt["aggregate_bt"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fit-1.pkl", "fit-2.pkl", "fit-3.pkl", "fit-bad.error.txt"]
    assert "simulated failure" in (tmp_path / f"fit-bad{ERROR_SUFFIX}").read_text()

    # resume: delete one result; only it (and the failed job) run again
    (tmp_path / f"fit-2{RESULT_SUFFIX}").unlink()
    second = run_jobs(fit_jobs(), out_dir=tmp_path, scheduler="serial", warm=warm,
                      progress=False)
    assert sorted(second.executed) == ["fit-2", "fit-bad"]
    assert second.resumed == ["fit-1", "fit-3"]
    check_fits(second)
    # same seed, same program, same data: the rerun reproduces the lost result exactly
    np.testing.assert_array_equal(second.results["fit-2"].value["theta_mean"],
                                  first.results["fit-2"].value["theta_mean"])

    # nothing left to do: nothing runs, and nothing is built
    third = run_jobs(fit_jobs()[:3], out_dir=tmp_path, progress=False, warm=warm)
    assert third.executed == [] and third.ok and third.prebuilt == {}


def test_stale_results_are_recomputed(tmp_path):
    run_jobs([Job("a", square, {"x": 2.0})], out_dir=tmp_path, scheduler="serial",
             progress=False)
    # same key, different arguments: the stored result does not belong to this job
    report = run_jobs([Job("a", square, {"x": 3.0})], out_dir=tmp_path, scheduler="serial",
                      progress=False)
    assert report.executed == ["a"] and report.values() == {"a": 9.0}
    # a corrupt file is recomputed, not trusted
    (tmp_path / f"a{RESULT_SUFFIX}").write_bytes(b"not a pickle")
    report = run_jobs([Job("a", square, {"x": 3.0})], out_dir=tmp_path, scheduler="serial",
                      progress=False)
    assert report.executed == ["a"] and report.values() == {"a": 9.0}


def test_progress_is_shown(capsys):
    run_jobs([Job(f"j{i}", square, {"x": i}) for i in range(3)], scheduler="serial",
             desc="squares")
    err = capsys.readouterr().err
    assert "squares" in err and "3/3" in err


@pytest.mark.parametrize(
    ("jobs", "kwargs", "match"),
    [
        ([Job("a", square, {"x": 1}), Job("a", square, {"x": 2})], {}, "'a' is used twice"),
        ([Job("a/b", square, {"x": 1})], {}, "key 'a/b'"),
        ([Job("a", square, {"x": 1}), "b"], {}, r"jobs\[1\] is a str"),
        ([Job("a", square, {"x": 1})], {"scheduler": "threads"}, "scheduler 'threads'"),
        ([Job("a", square, {"x": 1})], {"n_workers": 0}, "n_workers"),
    ],
)
def test_bad_input_raises(jobs, kwargs, match):
    with pytest.raises(ps.PluralstanError, match=match):
        run_jobs(jobs, progress=False, **kwargs)


def test_dask_local_cluster(tmp_path, warm):
    # Dask is in the dev extra only, not a runtime dependency
    distributed = pytest.importorskip("distributed", reason="Dask's distributed scheduler is "
                                      "not installed (it comes with the dev extra)")
    # thread workers in this process, talking TCP on loopback like a real cluster
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        report = run_jobs(fit_jobs(), scheduler=client, warm=warm, out_dir=tmp_path,
                          progress=False)
        check_fits(report)
        assert "aggregate_bt" in report.prebuilt
        # the same script given only the scheduler's address
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        by_address = run_jobs([Job(f"sq{i}", square, {"x": i}) for i in range(4)],
                              scheduler=cluster.scheduler_address, progress=False)
        assert by_address.values() == {"sq0": 0, "sq1": 1, "sq2": 4, "sq3": 9}
