"""Integration tests against a real one-node SLURM cluster on this machine (issue 17, part 3).

tools/slurm_local.sh installs slurm-wlm and munge (and slurmdbd on a private MariaDB, so that
`sacct`, which submitit reads job states from, works), starts the daemons, and stops them after
the module. Run with ``pytest -m slurm tests/test_slurm.py``; `.ci/run` runs them after
`make test`.

The module is skipped, with the reason, where the cluster cannot start: not Linux, not root, no
apt-get, or the script's own error (its output, with the daemons' log tails, is the skip
reason). Set CXR_REQUIRE_SLURM=1 to make that a failure instead (CI on a machine known to work).

What submitit (1.5.4) does when a job is disturbed, as these tests check:

* ``scontrol requeue <id>`` on a running job: slurm sends SIGTERM (submitit's job logs
  "Bypassing signal SIGTERM"), then SIGKILL after KillWait; sacct shows REQUEUED, then PENDING
  (squeue: Reason=BeginTime): slurm holds a requeued job for AuthInfo cred_expire seconds (120 by
  default, 20 in tools/slurm_local.sh). The job then runs again *from the start* under the same
  job id (the function is called anew; submitit's checkpointing only applies to its own
  timeout/preemption signal, USR2), and ``job.result()`` returns that second run's result: for
  the caller a requeue is invisible except in time. ``scontrol show job`` counts Restarts=1.
* ``scancel <id>``: sacct state "CANCELLED by <uid>"; ``job.done()`` becomes true at submitit's
  next sacct poll and ``job.result()`` raises ``submitit.core.utils.UncompletedJobError`` ("has
  not produced any output (state: CANCELLED by 0)") after waiting up to 15 s
  (``_results_timeout_s``) for a result file. ``job.exception()`` returns that error instead of
  raising. A function that raised is a different error, ``submitit.core.utils.FailedJobError``.
  So an executor retries a lost job by catching UncompletedJobError and submitting the same
  function again (a new job id); the last test does that.
* submitit notices a job's end by its result file (checked every second in ``wait()``) or, for a
  job that ends without one (cancelled, killed, node failure), only at its next sacct poll. One
  watcher (``SlurmJob.watcher``) polls for all jobs, every max(2 s, half the time since the
  last submission) up to 10 min: a job cancelled an hour after the last submission is seen as
  ended up to 10 min later. ``job.done(force_check=True)`` polls now.
* Without accounting, sacct fails, submitit warns "Bypassing sacct error" and reports every job
  as UNKNOWN (= not finished): ``result()`` of a cancelled job would wait forever.
* ``job.state`` is a cached sacct answer: it can still say PENDING/RUNNING after ``result()``
  has returned. Use ``done()``/``result()``/``exception()``, not ``state``, to decide.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "slurm_local.sh"


def _run(*cmd, timeout=60, check=True):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {proc.returncode}\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def _unavailable(reason):
    if os.environ.get("CXR_REQUIRE_SLURM") == "1":
        pytest.fail(f"CXR_REQUIRE_SLURM=1 but: {reason}", pytrace=False)
    pytest.skip(reason)


def _wait_until(predicate, timeout, what):
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def slurm_cluster():
    """Start the local cluster for this module (unless it already runs) and stop it after."""
    if not sys.platform.startswith("linux"):
        _unavailable("slurm tests need Linux")
    if os.geteuid() != 0:
        _unavailable("slurm tests need root (tools/slurm_local.sh installs and starts daemons)")
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        _unavailable("slurm is not installed and apt-get is not available to install it")
    was_up = _run("bash", SCRIPT, "status", check=False).returncode == 0
    t0 = time.monotonic()
    proc = _run("bash", SCRIPT, "start", timeout=600, check=False)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        _unavailable(f"tools/slurm_local.sh start failed (rc {proc.returncode}):\n{tail}")
    print(f"slurm cluster up in {time.monotonic() - t0:.1f} s: {proc.stdout.strip()}")
    yield
    if not was_up:
        _run("bash", SCRIPT, "stop", timeout=120, check=False)


# ---- functions run as slurm jobs (pickled by value: the job cannot import this test module) ---

def add(a, b):
    return a + b


def where_and_when(x):
    start = time.time()
    time.sleep(2)
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID"), start, time.time()


def count_starts_and_sleep(counter, seconds):
    """Add one to the number in ``counter`` (one per start of the job), sleep, return it."""
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    time.sleep(seconds)
    return n


@pytest.fixture
def executor(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")
    import cloudpickle
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit" / "%j", cluster="slurm")
    ex.update_parameters(slurm_partition="debug", timeout_min=10, cpus_per_task=1)
    return ex


def _sacct_state(job_id):
    out = _run("sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)).stdout.splitlines()
    return out[-1].strip() if out else ""


# ---- tests ---------------------------------------------------------------------------------------

def test_sbatch_wrap_runs_a_job(slurm_cluster, tmp_path):
    out = tmp_path / "hello.txt"
    proc = _run("sbatch", "--parsable", "--partition=debug", f"--chdir={tmp_path}",
                f"--output={tmp_path / 'slurm-%j.out'}",
                "--wrap", f"echo hello from $SLURM_JOB_ID > {out}")
    job_id = proc.stdout.strip().split(";")[0]
    _wait_until(lambda: out.exists() and out.read_text().strip(), 60, f"job {job_id}'s file")
    assert out.read_text().strip() == f"hello from {job_id}"
    _wait_until(lambda: _sacct_state(job_id) == "COMPLETED", 60, f"job {job_id} COMPLETED")


def test_submitit_submit_and_job_array(executor, tmp_path):
    job = executor.submit(add, 2, 3)
    assert job.result() == 5

    executor.update_parameters(slurm_array_parallelism=2)
    jobs = executor.map_array(where_and_when, [1, 2, 3, 4])
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == [1, 4, 9, 16]
    assert sorted(r[1] for r in results) == ["0", "1", "2", "3"]
    main_id = jobs[0].job_id.split("_")[0]
    assert all(j.job_id == f"{main_id}_{i}" for i, j in enumerate(jobs))
    script = tmp_path / "submitit" / main_id / f"{main_id}_submission.sh"
    assert "#SBATCH --array=0-3%2" in script.read_text()
    # never more than 2 tasks at once
    events = sorted([(r[2], 1) for r in results] + [(r[3], -1) for r in results])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2


def test_requeue_reruns_and_scancel_raises(executor, tmp_path):
    import submitit

    requeued_counter, cancelled_counter = tmp_path / "requeued", tmp_path / "cancelled"
    requeued = executor.submit(count_starts_and_sleep, str(requeued_counter), 20)
    cancelled = executor.submit(count_starts_and_sleep, str(cancelled_counter), 300)
    _wait_until(lambda: requeued_counter.exists() and cancelled_counter.exists(), 120,
                "both jobs to start")
    time.sleep(2)

    t0 = time.monotonic()
    _run("scontrol", "requeue", requeued.job_id)
    _run("scancel", cancelled.job_id)

    # the cancelled job: done, and result() raises UncompletedJobError naming the state
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="CANCELLED"):
        cancelled.result()
    assert isinstance(cancelled.exception(), submitit.core.utils.UncompletedJobError)
    assert _sacct_state(cancelled.job_id).startswith("CANCELLED")
    assert cancelled_counter.read_text() == "1"

    # the requeued job: held (BeginTime), run again from the start, same job id
    assert requeued.result() == 2
    assert requeued_counter.read_text() == "2"
    assert time.monotonic() - t0 >= 20  # it did run again, in full
    show = _run("scontrol", "show", "job", requeued.job_id).stdout
    assert "Restarts=1" in show and "JobState=COMPLETED" in show
    _wait_until(lambda: _sacct_state(requeued.job_id) == "COMPLETED", 60, "sacct COMPLETED")

    # what an executor does with a lost job: submit it again
    retried = executor.submit(count_starts_and_sleep, str(cancelled_counter), 1)
    assert retried.job_id != cancelled.job_id
    assert retried.result() == 2
