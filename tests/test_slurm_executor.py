"""The slurm executor (cxrlib.train.executors.SlurmExecutor) against the real one-node SLURM
cluster of tools/slurm_local.sh: the same predictions table as inline, --no-wait then a run that
reattaches without submitting twice, a lost (cancelled) job submitted again, and notebook 03's
smoke grid run on SLURM with one fold job requeued and another killed while it runs.

Marked ``slurm`` like tests/test_slurm.py (``pytest -m slurm``); skipped, with the reason, where
the cluster cannot start (CXR_REQUIRE_SLURM=1 makes that a failure).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from cxrlib.train.crossval import run_crossval
from cxrlib.train.executors import SLURM_JOBS_FILE, SlurmExecutor, UnitsSubmitted
from cxrlib.data.splits import make_split_plan
from test_crossval import TINY, write_tiny_pngs

pytestmark = pytest.mark.slurm

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "slurm_local.sh"


def _unavailable(reason):
    if os.environ.get("CXR_REQUIRE_SLURM") == "1":
        pytest.fail(f"CXR_REQUIRE_SLURM=1 but: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_cluster():
    """Start the local cluster for this module (unless it already runs) and stop it after."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        _unavailable("slurm tests need Linux and root (tools/slurm_local.sh starts daemons)")
    if not (shutil.which("slurmctld") or shutil.which("apt-get")):
        _unavailable("slurm is not installed and apt-get is not available to install it")
    pytest.importorskip("submitit")
    was_up = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    proc = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        _unavailable(f"tools/slurm_local.sh start failed (rc {proc.returncode}):\n{tail}")
    yield
    if not was_up:
        subprocess.run([SCRIPT, "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_units")
    manifest, views = write_tiny_pngs(root)
    return manifest, views, make_split_plan(manifest, folds=2, repetitions=1, seed=0)


def _slurm(**kwargs):
    return SlurmExecutor(partition="debug", time_min=10, cpus_per_task=1, array_parallelism=2,
                         poll_s=1.0, **kwargs)


def _jobs(artifacts):
    return json.loads((artifacts / "shards" / "slurm" / SLURM_JOBS_FILE).read_text())


def test_slurm_gives_the_inline_table_and_reattaches_after_no_wait(slurm_cluster, cohort,
                                                                   tmp_path):
    manifest, views, plan = cohort
    kwargs = dict(TINY, seed=4)
    inline = run_crossval(views, manifest, plan, tmp_path / "inline", executor="inline", **kwargs)
    artifacts = tmp_path / "slurm"
    with pytest.raises(UnitsSubmitted, match=r"2 unit\(s\) submitted"):
        run_crossval(views, manifest, plan, artifacts, executor=_slurm(wait=False), **kwargs)
    submitted = {e["job_id"] for e in _jobs(artifacts).values()}
    assert len(submitted) == 2 and all("_" in j for j in submitted)  # one job array
    preds = run_crossval(views, manifest, plan, artifacts, executor=_slurm(), **kwargs)
    pd.testing.assert_frame_equal(preds, inline)
    arrays = [p.name for p in (artifacts / "shards" / "slurm").iterdir() if p.is_dir()]
    assert arrays == [next(iter(submitted)).split("_")[0]]  # nothing submitted twice
    assert _jobs(artifacts) == {}


def test_a_cancelled_job_is_submitted_again(slurm_cluster, cohort, tmp_path):
    manifest, views, plan = cohort
    kwargs = dict(TINY, seed=5, folds=[0])
    artifacts = tmp_path / "slurm"
    with pytest.raises(UnitsSubmitted):
        run_crossval(views, manifest, plan, artifacts, executor=_slurm(wait=False), **kwargs)
    (first,) = [e["job_id"] for e in _jobs(artifacts).values()]
    subprocess.run(["scancel", first], check=True, timeout=60)
    time.sleep(1)
    preds = run_crossval(views, manifest, plan, artifacts, executor=_slurm(), **kwargs)
    assert sorted(preds["image_id"]) == sorted(plan.loc[plan["fold"] == 0, "image_id"])
    arrays = sorted(p.name for p in (artifacts / "shards" / "slurm").iterdir() if p.is_dir())
    assert len(arrays) == 2 and first.split("_")[0] in arrays  # the lost job, then its retry


# ---- notebook 03's smoke grid, disturbed while it runs ------------------------------------------

def _squeue_running() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"], capture_output=True,
                         text=True, timeout=30).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _disturb(log: list, stop: threading.Event):
    """Requeue the first fold job seen running and cancel the next one (another job id), each
    as soon as squeue shows it running: the job is then still importing torch, far from writing
    its shard (a smoke fold trains in seconds). Logs what was done as ``(action, job id)``."""
    deadline = time.monotonic() + 600
    while not stop.is_set() and time.monotonic() < deadline and len(log) < 2:
        running = [j for j in _squeue_running() if j not in {job for _, job in log}]
        if running:
            action = "requeue" if not log else "scancel"
            command = ["scontrol", "requeue", running[0]] if action == "requeue" else \
                ["scancel", running[0]]
            if subprocess.run(command, capture_output=True, timeout=60).returncode == 0:
                log.append((action, running[0]))
        time.sleep(0.2)


def test_notebook_03_smoke_grid_on_slurm_survives_a_requeue_and_a_kill(slurm_cluster, tmp_path):
    """Seed 001's grid of notebook 03 at the smoke profile (three views of COVID-Net, the
    profile's folds) on the synthetic cohort: the slurm executor gives the inline table, although
    one running fold job is requeued (`scontrol requeue`: rerun from the start under its id) and
    another is killed (`scancel`: lost, submitted again by the executor)."""
    from cxrlib.data.manifest import load_manifest
    from cxrlib.data.synthetic import default_cohort
    from cxrlib.preprocess.views import build_views
    from cxrlib.profiles import get_profile
    from cxrlib.train.crossval import classifier_setup

    profile = get_profile("smoke")
    manifest = load_manifest(default_cohort("arias", profile, seed=0, progress=False))
    views = build_views(manifest, None, ("exp1", "exp2", "exp3"), size=profile.image_size,
                        cache_dir=tmp_path / "views", progress=False).table
    plan = make_split_plan(manifest, folds=profile.folds, repetitions=profile.repetitions, seed=0)
    setup = classifier_setup(profile)
    grid = dict(experiments=["exp1", "exp2", "exp3"], models=[setup.covidnet],
                image_size=profile.image_size, width=setup.width, folds=setup.folds, seed=0,
                gpu=setup.gpu, progress=False, **setup.overrides)
    inline = run_crossval(views, manifest, plan, tmp_path / "inline", executor="inline", **grid)
    assert len(inline) > 0 and set(inline["fold"]) == set(setup.folds)

    log: list = []
    stop = threading.Event()
    disturber = threading.Thread(target=_disturb, args=(log, stop), daemon=True)
    disturber.start()
    try:
        preds = run_crossval(views, manifest, plan, tmp_path / "slurm",
                             executor=_slurm(retries=2), **grid)
    finally:
        stop.set()
        disturber.join(timeout=30)
    assert [action for action, _ in log] == ["requeue", "scancel"], log
    pd.testing.assert_frame_equal(preds, inline)
    # the requeued job ran twice under its id; the killed one was submitted again
    requeued = subprocess.run(["scontrol", "show", "job", log[0][1]], capture_output=True,
                              text=True, timeout=30).stdout
    assert "Restarts=1" in requeued or not requeued  # slurmctld may have purged it already
    arrays = sorted(p.name for p in (tmp_path / "slurm" / "shards" / "slurm").iterdir()
                    if p.is_dir())
    assert len(arrays) == 2 and log[1][1].split("_")[0] in arrays
