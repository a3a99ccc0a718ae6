"""Units of work (cxrlib.train.units) and executors (cxrlib.train.executors): settings hashes,
shards, the one writer's merge, refusals of other settings, and the same tables from every
executor."""
import json
import subprocess
import sys
import textwrap

import nbformat
import pandas as pd
import pytest

from cxrlib.train import crossval, units
from cxrlib.train.crossval import crossval_specs, run_crossval
from cxrlib.train.executors import LocalExecutor, UnitFailed, executor_settings, get_executor
from cxrlib.train.predictions import RUN_KEY, read_predictions
from cxrlib.data.splits import make_split_plan
from cxrlib.train.training import RECIPES
from cxrlib.train.units import (
    HASH_COLUMN, UnitSettingsConflict, merge_shards, merged_shards, pending_shards,
)
from test_crossval import TINY, write_tiny_pngs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(data folder, manifest, views, 4-fold plan) of 18 patients' learnable 32-px images."""
    root = tmp_path_factory.mktemp("units")
    manifest, views = write_tiny_pngs(root)
    plan = make_split_plan(manifest, folds=4, repetitions=1, seed=0)
    return root, manifest, views, plan


@pytest.fixture(scope="module")
def local2():
    """A local executor of two worker processes (one thread each), shared by the tests."""
    executor = LocalExecutor(workers=2, threads=1, gpus=[])
    yield executor
    executor.close()


def _table(artifacts):
    return read_predictions(artifacts / "predictions.parquet")


def _complete(table, manifest, folds):
    assert sorted(table["fold"].unique()) == folds
    assert not table.duplicated(["image_id", "repetition", "experiment", "model", "method"]).any()
    assert table[HASH_COLUMN].nunique() == 1


# --------------------------------------------------------------------------------------------
# Settings hash


def test_settings_hash_changes_with_the_result_changing_settings_only(cohort, tmp_path):
    root, manifest, views, plan = cohort

    def specs(**changes):
        kwargs = dict(TINY, seed=0, folds=[0, 1])
        kwargs.update(changes)
        return crossval_specs(views, manifest, plan, tmp_path / "a", **kwargs)

    base = specs()
    assert len(base) == 2
    assert base[0].settings_hash == base[1].settings_hash  # keys are not settings
    assert len(base[0].settings_hash) == 16
    h = base[0].settings_hash
    for change in (dict(seed=1), dict(epochs=2), dict(image_size=48), dict(width=0.25),
                   dict(batch_size=4), dict(val_fraction=0.2),
                   dict(models=[("covidnet", RECIPES["arias2020-fast"])]),
                   dict(experiments={"exp1": "exp1"}, models=[("covidnet", RECIPES["arias2020"]
                                                                .with_overrides(lr=1e-3))])):
        assert specs(**change)[0].settings_hash != h, change
    other_plan = make_split_plan(manifest, folds=4, repetitions=1, seed=1)
    assert crossval_specs(views, manifest, other_plan, tmp_path / "a", **dict(TINY, folds=[0]))[
        0].settings_hash != h
    relabelled = manifest.assign(label=manifest["label"].where(manifest.index != 0, "covid19"))
    assert crossval_specs(views, relabelled, plan, tmp_path / "a", **dict(TINY, folds=[0]))[
        0].settings_hash != h
    # what does not change the result: artifacts kept, device, progress, the folder, where the
    # image files lie (relative paths resolved against data_root)
    rel = views.assign(path=views["path"].map(lambda p: p.split("/img/")[1]))
    for same in (specs(save_embeddings_too=False, save_checkpoints=False), specs(device="cpu"),
                 specs(progress=True),
                 crossval_specs(views, manifest, plan, tmp_path / "b", **dict(TINY, folds=[0, 1])),
                 crossval_specs(rel, manifest, plan, tmp_path / "c", data_root=root / "img",
                                **dict(TINY, folds=[0, 1]))):
        assert same[0].settings_hash == h
    # the hash is of the settings' content, not of their order
    assert units.settings_hash({"a": 1, "b": [1, 2]}) == units.settings_hash({"b": (1, 2), "a": 1})


# --------------------------------------------------------------------------------------------
# The race: two processes into one folder

_DRIVER = textwrap.dedent("""
    import sys, pandas as pd, torch
    torch.set_num_threads(1)
    from cxrlib.train.crossval import run_crossval
    folder, folds = sys.argv[1], [int(f) for f in sys.argv[2].split(",")]
    views = pd.read_csv(folder + "/views.csv", dtype={"image_id": str})
    manifest = pd.read_csv(folder + "/manifest.csv", dtype={"image_id": str})
    plan = pd.read_csv(folder + "/plan.csv", dtype={"image_id": str})
    run_crossval(views, manifest, plan, folder + "/artifacts", folds=folds, image_size=32,
                 width=0.125, epochs=1, batch_size=8, progress=False, executor="inline")
""")


def test_two_processes_into_one_folder_leave_a_readable_complete_table(cohort, tmp_path):
    _, manifest, views, plan = cohort
    for name, frame in (("views", views), ("manifest", manifest), ("plan", plan)):
        frame.to_csv(tmp_path / f"{name}.csv", index=False)
    procs = [subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path), folds],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for folds in ("0,1", "2,3")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    artifacts = tmp_path / "artifacts"
    merge_shards(artifacts)  # nothing left to merge: each driver merged its own shards
    table = _table(artifacts)
    _complete(table, manifest, [0, 1, 2, 3])
    assert sorted(table["image_id"]) == sorted(manifest["image_id"])
    runs = pd.read_csv(artifacts / "crossval_runs.csv")
    assert sorted(runs["fold"]) == [0, 1, 2, 3]
    assert pending_shards(artifacts) == [] and len(merged_shards(artifacts)) == 4
    assert not list(artifacts.glob("*.tmp")) and not list(artifacts.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# A merge a crash left half-done


def test_shards_left_unmerged_are_merged_at_the_next_start_without_training(cohort, tmp_path,
                                                                              monkeypatch):
    _, manifest, views, plan = cohort
    artifacts = tmp_path / "artifacts"
    kwargs = dict(TINY, folds=[0, 1])
    with monkeypatch.context() as m:  # the driver dies before it merges anything
        m.setattr(units, "merge_shards", lambda folder: [])
        assert run_crossval(views, manifest, plan, artifacts, **kwargs).empty
    assert not (artifacts / "predictions.parquet").exists()
    assert len(pending_shards(artifacts)) == 2 and (artifacts / "logs").is_dir()
    calls = []
    real = crossval.train_classifier
    monkeypatch.setattr(crossval, "train_classifier",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    preds = run_crossval(views, manifest, plan, artifacts, **kwargs)
    assert calls == []
    _complete(preds, manifest, [0, 1])
    assert len(pd.read_csv(artifacts / "crossval_runs.csv")) == 2
    assert pending_shards(artifacts) == []


def test_a_crash_between_table_and_shards_is_finished_idempotently(cohort, tmp_path,
                                                                   monkeypatch):
    _, manifest, views, plan = cohort
    artifacts = tmp_path / "artifacts"
    with monkeypatch.context() as m:  # the table is written, the shards are not marked merged
        m.setattr(units, "_mark_merged", lambda shards: (_ for _ in ()).throw(OSError("crash")))
        with pytest.raises(OSError, match="crash"):
            run_crossval(views, manifest, plan, artifacts, **dict(TINY, folds=[0]))
    before = _table(artifacts)
    assert len(pending_shards(artifacts)) == 1
    merge_shards(artifacts)
    merge_shards(artifacts)
    pd.testing.assert_frame_equal(_table(artifacts), before)
    assert len(pd.read_csv(artifacts / "crossval_runs.csv")) == 1
    # a shard without its .json (the unit died while writing it) is not a done unit
    (artifacts / "shards" / "orphan.parquet").write_bytes(b"half")
    calls = []
    real = crossval.train_classifier
    monkeypatch.setattr(crossval, "train_classifier",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    run_crossval(views, manifest, plan, artifacts, **dict(TINY, folds=[0, 1]))
    assert calls == [1]  # fold 1 only
    _complete(_table(artifacts), manifest, [0, 1])


# --------------------------------------------------------------------------------------------
# Other settings into the same folder


@pytest.fixture(scope="module")
def done_fold(cohort, tmp_path_factory):
    _, manifest, views, plan = cohort
    artifacts = tmp_path_factory.mktemp("done") / "artifacts"
    run_crossval(views, manifest, plan, artifacts, **dict(TINY, folds=[0], seed=0))
    return artifacts


def test_a_rerun_with_another_seed_or_setting_is_refused_naming_it(cohort, done_fold):
    _, manifest, views, plan = cohort
    before = _table(done_fold)
    with pytest.raises(UnitSettingsConflict, match=r"exp1/covidnet/arias2020 made with other "
                                                   r"settings: seed: 0 in the folder, 1 now\..*"
                                                   r"--fresh"):
        run_crossval(views, manifest, plan, done_fold, **dict(TINY, folds=[0], seed=1))
    # another fold of the same cell with other settings would mix them in one table too
    with pytest.raises(UnitSettingsConflict, match=r"recipe\.epochs: 1 in the folder, 2 now"):
        run_crossval(views, manifest, plan, done_fold, **dict(TINY, folds=[1], epochs=2))
    with pytest.raises(UnitSettingsConflict, match=r"image_size: 32 in the folder, 48 now"):
        run_crossval(views, manifest, plan, done_fold, **dict(TINY, folds=[0], image_size=48))
    other_plan = make_split_plan(manifest, folds=4, repetitions=1, seed=1)
    with pytest.raises(UnitSettingsConflict, match=r"inputs \(hash of the split plan, the labels"):
        run_crossval(views, manifest, other_plan, done_fold, **dict(TINY, folds=[0]))
    pd.testing.assert_frame_equal(_table(done_fold), before)  # refused before anything ran
    # the same settings: done, nothing trained; another cell: allowed
    again = run_crossval(views, manifest, plan, done_fold, **dict(TINY, folds=[0], seed=0))
    pd.testing.assert_frame_equal(again, before)


def test_rows_without_a_settings_hash_are_refused(cohort, done_fold, tmp_path):
    _, manifest, views, plan = cohort
    legacy = tmp_path / "artifacts"
    legacy.mkdir()
    _table(done_fold).drop(columns=HASH_COLUMN).to_parquet(legacy / "predictions.parquet")
    with pytest.raises(UnitSettingsConflict, match="settings unknown"):
        run_crossval(views, manifest, plan, legacy, **dict(TINY, folds=[0]))


# --------------------------------------------------------------------------------------------
# Executors


def test_inline_and_local_give_identical_predictions_tables(cohort, tmp_path, local2):
    _, manifest, views, plan = cohort
    kwargs = dict(TINY, folds=[0, 1, 2, 3], seed=2)
    inline = run_crossval(views, manifest, plan, tmp_path / "inline", executor="inline", **kwargs)
    local = run_crossval(views, manifest, plan, tmp_path / "local", executor=local2, **kwargs)
    _complete(inline, manifest, [0, 1, 2, 3])
    pd.testing.assert_frame_equal(inline, local)
    pd.testing.assert_frame_equal(_table(tmp_path / "inline"), _table(tmp_path / "local"))
    runs = [pd.read_csv(tmp_path / name / "crossval_runs.csv").sort_values(list(RUN_KEY))
            .drop(columns=["train_seconds", "finished"]).reset_index(drop=True)
            for name in ("inline", "local")]
    pd.testing.assert_frame_equal(*runs)


def test_a_unit_that_raises_fails_the_run_with_its_traceback(cohort, tmp_path, local2):
    _, manifest, views, plan = cohort
    kwargs = dict(TINY, folds=[0, 1], val_fraction=0.0)  # no validation images: model selection
    with pytest.raises(UnitFailed, match=r"(?s)exp1/covidnet/arias2020 r0 f\d failed:.*"
                                         r"Traceback.*train_fold.*ValueError: .*no validation"):
        run_crossval(views, manifest, plan, tmp_path / "local", executor=local2, **kwargs)
    with pytest.raises(ValueError, match="no validation images"):
        run_crossval(views, manifest, plan, tmp_path / "inline", executor="inline", **kwargs)


def test_executor_names_and_defaults(monkeypatch):
    monkeypatch.delenv("CXR_EXECUTOR", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert executor_settings() == {"name": "inline"}  # auto without GPUs
    assert get_executor().name == "inline"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    auto = executor_settings("auto", threads=1)
    assert auto["name"] == "local" and auto["workers"] == 2 and auto["gpus"] == ["0", "1"]
    monkeypatch.setenv("CXR_EXECUTOR", "local")
    monkeypatch.setenv("CXR_WORKERS", "3")
    monkeypatch.setenv("CXR_THREADS", "1")
    chosen = get_executor()
    assert chosen.describe() == {"name": "local", "workers": 3, "threads": 1,
                                 "gpus": ["0", "1"], "retries": 2}
    assert get_executor() is chosen  # kept, with its pool
    with pytest.raises(ValueError, match="unknown executor 'cluster'"):
        executor_settings("cluster")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        executor_settings("local", workers=0)
    slurm = get_executor("slurm", slurm_config=None)
    assert slurm.name == "slurm" and slurm.wait and slurm.settings["array_parallelism"] == 8
    monkeypatch.setenv("CXR_EXECUTOR", "slurm")
    monkeypatch.setenv("CXR_NO_WAIT", "1")
    assert executor_settings()["wait"] is False


# --------------------------------------------------------------------------------------------
# The runner: --executor reaches the notebooks and run.json


def test_the_runner_passes_the_executor_to_the_notebooks_and_run_json(tmp_path, tiny_cohort):
    from cxrlib.data.manifest import write_manifest
    from cxrlib.runner import run_study

    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\ncohort = ""\nmanifest = ""\n'
                                       'run_dir = ""\nseed = 0\ninteractive = False')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from cxrlib.train.executors import get_executor\n"
        "print('executor:', get_executor().describe())")]
    nbformat.write(nb, nbs / "00_exec.ipynb")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="unknown executor"):
        run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, executor="cluster",
                  log=lambda *a: None)
    assert not out.exists()
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, executor="local",
                       workers=2, threads=1, log=lambda *a: None)
    assert record.executor["name"] == "local" and record.executor["workers"] == 2
    saved = json.loads((out / "run.json").read_text())
    assert saved["executor"] == record.executor
    assert "'name': 'local', 'workers': 2, 'threads': 1" in (out / "tiny" / "00_exec.ipynb"
                                                             ).read_text()
    # the executor is not a setting of the run folder: another one may continue the run
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, executor="inline",
                       log=lambda *a: None)
    assert record.executor == {"name": "inline"} and record.status == "ok"


# --------------------------------------------------------------------------------------------
# Notebook 02's units: CiT and COVID-SDNet folds


def test_cit_folds_inline_and_local_alike_and_other_settings_refused(tmp_path, local2):
    from cxrlib.train import cit
    from conftest import write_tiny_cohort

    df = write_tiny_cohort(tmp_path, n_patients=24, size=32)
    df = df[df["label"] != "pneumonia"].reset_index(drop=True)
    views = pd.DataFrame({"image_id": df["image_id"], "view": "sdnet",
                          "path": [str(tmp_path / p) for p in df["path"]]})
    plan = make_split_plan(df, folds=2, seed=0)
    setup = cit.CiTSetup(
        recipe=cit.CIT_RECIPES["fucitnet-fast"].with_overrides(epochs=2, batch_size=4),
        cit_classifier=("covidnet", 0.125, None),
        sdnet=("covidnet", RECIPES["arias2020-fast"].with_overrides(epochs=1, batch_size=4,
                                                                    augmentation=None)),
        sdnet_width=0.125, generator_width=0.0625, folds=[0, 1])
    runs = {}
    for name, executor in (("inline", "inline"), ("local", local2)):
        runs[name] = cit.run_cit_crossval(views, df, plan, tmp_path / name, setup, image_size=32,
                                          executor=executor)
    pd.testing.assert_frame_equal(_table(tmp_path / "inline"), _table(tmp_path / "local"))
    assert set(_table(tmp_path / "local")["model"]) == {"fucitnet", "covid-sdnet"}
    drop = ["cit_seconds", "sdnet_seconds", "finished"]
    pd.testing.assert_frame_equal(runs["inline"].drop(columns=drop),
                                  runs["local"].drop(columns=drop))
    assert runs["local"]["fold"].tolist() == [0, 1]
    assert len(cit.read_cit_history(tmp_path / "local")) == 4
    artifacts = tmp_path / "inline"
    with pytest.raises(UnitSettingsConflict, match=r"recipe\.lam: 0\.05 in the folder, 0\.1 now"):
        cit.run_cit_crossval(views, df, plan, artifacts, setup, image_size=32, lam=0.1, folds=[0])
    # the lambda sweep writes no rows: its units are other cells, done once merged
    sweep = dict(image_size=32, lam=0.0, folds=[0], with_sdnet=False, write_predictions=False)
    assert len(cit.run_cit_crossval(views, df, plan, artifacts, setup, **sweep)) == 1
    assert cit.run_cit_crossval(views, df, plan, artifacts, setup, **sweep).empty
    assert sorted(cit.read_cit_runs(artifacts)["lam"]) == [0.0, 0.05, 0.05]


# --------------------------------------------------------------------------------------------
# The slurm executor, against a stand-in for submitit (the real cluster: test_slurm_executor.py)


class _FakeJob:
    """A submitit job that runs its function when first asked whether it is done; ``fate``:
    "ok", "lost" (UncompletedJobError, as for a cancelled or killed job) or "pending"."""

    def __init__(self, fn, spec, job_id, fate="ok"):
        self.fn, self.spec, self.job_id, self.fate, self._out = fn, spec, job_id, fate, None

    def done(self):
        if self.fate == "pending":
            return False
        if self._out is None:
            try:
                self._out = ("ok", self.fn(self.spec)) if self.fate == "ok" else ("lost", None)
            except Exception as exc:  # noqa: BLE001 - as submitit hands it back
                import traceback
                self._out = ("error", f"{exc!r}\n{traceback.format_exc()}")
        return True

    def result(self):
        from submitit.core.utils import FailedJobError, UncompletedJobError

        self.done()
        status, value = self._out
        if status == "error":
            raise FailedJobError(f"Job (task=0) failed during processing with trace:\n{value}")
        if status == "lost":
            raise UncompletedJobError(f"Job {self.job_id} (task: 0) with path ... has not "
                                      "produced any output (state: CANCELLED by 0)")
        return value


class _FakeCluster:
    def __init__(self, fates=None):
        self.fates, self.jobs, self.submitted, self.next_id = dict(fates or {}), {}, [], 100

    def executor(self, owner):
        cluster = self

        class Submitter:
            def map_array(self, fn, specs):
                main, cluster.next_id = cluster.next_id, cluster.next_id + 1
                return [cluster._job(fn, spec, f"{main}_{i}") for i, spec in enumerate(specs)]

            def submit(self, fn, spec):
                job_id, cluster.next_id = str(cluster.next_id), cluster.next_id + 1
                return cluster._job(fn, spec, job_id)
        return Submitter()

    def _job(self, fn, spec, job_id):
        fates = self.fates.get(spec.fold, ["ok"])
        fate = fates.pop(0) if len(fates) > 1 else fates[0]
        job = _FakeJob(fn, spec, job_id, fate)
        self.jobs[job_id] = job
        self.submitted.append((spec.fold, job_id))
        return job

    def attach(self, folder, job_id):
        return self.jobs[job_id]


def _slurm(monkeypatch, cluster, **kwargs):
    from cxrlib.train.executors import SlurmExecutor

    executor = SlurmExecutor(poll_s=0, **kwargs)
    monkeypatch.setattr(executor, "_submitit", lambda folder: cluster.executor(executor))
    monkeypatch.setattr(executor, "_job", lambda folder, job_id: cluster.attach(folder, job_id))
    return executor


def test_slurm_executor_retries_lost_jobs_and_reattaches(cohort, tmp_path, monkeypatch):
    from cxrlib.train.executors import SLURM_JOBS_FILE, UnitLost, UnitsSubmitted

    _, manifest, views, plan = cohort
    kwargs = dict(TINY, folds=[0, 1], seed=2)
    inline = run_crossval(views, manifest, plan, tmp_path / "inline", executor="inline", **kwargs)
    # fold 1's first job is lost (preempted, out of memory...): submitted again, same table
    cluster = _FakeCluster({1: ["lost", "ok"]})
    artifacts = tmp_path / "slurm"
    preds = run_crossval(views, manifest, plan, artifacts, executor=_slurm(monkeypatch, cluster),
                         **kwargs)
    pd.testing.assert_frame_equal(preds, inline)
    assert [fold for fold, _ in cluster.submitted] == [0, 1, 1]
    assert cluster.submitted[0][1] == "100_0" and cluster.submitted[2][1] == "101"
    assert json.loads((artifacts / "shards" / "slurm" / SLURM_JOBS_FILE).read_text()) == {}
    # lost more often than the retries allow
    cluster = _FakeCluster({0: ["lost"]})
    with pytest.raises(UnitLost, match=r"r0 f0: SLURM job \d+ was lost 2 times"):
        run_crossval(views, manifest, plan, tmp_path / "lost",
                     executor=_slurm(monkeypatch, cluster, retries=1), **kwargs)
    # --no-wait: submit and stop; the job ids are kept; a later run reattaches, never resubmits
    cluster = _FakeCluster({0: ["pending"], 1: ["pending"]})
    later = tmp_path / "later"
    with pytest.raises(UnitsSubmitted, match=r"2 unit\(s\) submitted"):
        run_crossval(views, manifest, plan, later,
                     executor=_slurm(monkeypatch, cluster, wait=False), **kwargs)
    jobs = json.loads((later / "shards" / "slurm" / SLURM_JOBS_FILE).read_text())
    assert sorted(e["job_id"] for e in jobs.values()) == ["100_0", "100_1"]
    with pytest.raises(UnitsSubmitted, match=r"0 unit\(s\) submitted as SLURM jobs now, "
                                             r"2 submitted earlier"):
        run_crossval(views, manifest, plan, later,
                     executor=_slurm(monkeypatch, cluster, wait=False), **kwargs)
    for job in cluster.jobs.values():
        job.fate = "ok"  # the jobs run while no driver watches; one even finishes and is merged
    cluster.jobs["100_0"].done()
    merge_shards(later)
    preds = run_crossval(views, manifest, plan, later, executor=_slurm(monkeypatch, cluster),
                         **kwargs)
    assert len(cluster.submitted) == 2  # nothing submitted twice
    pd.testing.assert_frame_equal(preds, inline)
    assert json.loads((later / "shards" / "slurm" / SLURM_JOBS_FILE).read_text()) == {}


def test_slurm_executor_fails_with_the_units_traceback(cohort, tmp_path, monkeypatch):
    from cxrlib.train.executors import SLURM_JOBS_FILE

    _, manifest, views, plan = cohort
    cluster = _FakeCluster()
    with pytest.raises(UnitFailed, match=r"(?s)r0 f0 \(SLURM job 100_0\) failed:.*Traceback.*"
                                         r"no validation images"):
        run_crossval(views, manifest, plan, tmp_path, executor=_slurm(monkeypatch, cluster),
                     **dict(TINY, folds=[0], val_fraction=0.0))
    # the failed unit's job is forgotten: a run started again submits it anew
    assert json.loads((tmp_path / "shards" / "slurm" / SLURM_JOBS_FILE).read_text()) == {}


def test_slurm_settings_file(tmp_path, monkeypatch):
    import shutil

    import submitit

    from cxrlib.train.executors import SlurmExecutor, read_slurm_config

    path = tmp_path / "slurm.yaml"
    path.write_text("partition: gpu\ntime_min: 240\ngpus_per_task: 1\ncpus_per_task: 8\n"
                    "mem_gb: 32\narray_parallelism: 4\nsbatch:\n  account: proj\n"
                    "setup: module load cuda\n")
    cfg = read_slurm_config(path)
    assert cfg["partition"] == "gpu" and cfg["sbatch"] == {"account": "proj"}
    assert cfg["setup"] == ["module load cuda"] and cfg["retries"] == 2
    # without SLURM on the PATH: a clear error, before submitit's own
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs SLURM's srun and sbatch on the PATH"):
        SlurmExecutor(path)._submitit(tmp_path / "jobs" / "%A")
    # as on a cluster's login node (submitit checks srun's CPU affinity): the YAML's settings
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    submitter = SlurmExecutor(path)._submitit(tmp_path / "jobs" / "%A")
    params = submitter.parameters
    assert params["partition"] == "gpu" and params["time"] == 240 and params["gpus_per_task"] == 1
    assert params["cpus_per_task"] == 8 and params["array_parallelism"] == 4
    assert params["mem"] == "32768M" and params["additional_parameters"] == {"account": "proj"}
    path.write_text("partition: gpu\nnodes: 2\n")
    with pytest.raises(ValueError, match=r"unknown SLURM setting\(s\) \['nodes'\]"):
        read_slurm_config(path)
    path.write_text("time_min: soon\n")
    with pytest.raises(ValueError, match="time_min .* must be a whole number"):
        read_slurm_config(path)


def test_a_no_wait_submission_stops_the_cohort_without_failing_it(tmp_path, tiny_cohort):
    from cxrlib.data.manifest import write_manifest
    from cxrlib.runner import run_study

    df, root = tiny_cohort
    csv = tmp_path / "tiny.csv"
    write_manifest(df, csv, data_root=root)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    params = nbformat.v4.new_code_cell('profile = "smoke"\ncohort = ""\nmanifest = ""\n'
                                       'run_dir = ""\nseed = 0\ninteractive = False')
    params.metadata["tags"] = ["parameters"]
    for name, source in (
            ("00_submit.ipynb",
             "import pathlib\nfrom cxrlib.train.executors import UnitsSubmitted\n"
             "(pathlib.Path(run_dir) / 'tables').mkdir(parents=True, exist_ok=True)\n"
             "(pathlib.Path(run_dir) / 'tables' / 'kept.csv').write_text('a\\n1\\n')\n"
             "raise UnitsSubmitted(2, 0, pathlib.Path('jobs.json'))"),
            ("01_later.ipynb", "raise AssertionError('must wait for the jobs')")):
        nb = nbformat.v4.new_notebook()
        nb.cells = [params, nbformat.v4.new_code_cell(source)]
        nbformat.write(nb, nbs / name)
    out = tmp_path / "run"
    record = run_study("smoke", manifest=csv, out_dir=out, notebooks_dir=nbs, log=lambda *a: None)
    assert record.status == "submitted"
    assert [(r.notebook, r.status) for r in record.results] == [("00_submit.ipynb", "submitted")]
    assert "2 unit(s) submitted as SLURM jobs" in record.results[0].error
    assert (out / "tiny" / "tables" / "kept.csv").is_file()  # nothing set aside
    claim = json.loads((out / "study.json").read_text())
    assert claim["cohorts"]["tiny"]["notebooks"]["00_submit.ipynb"]["status"] == "submitted"
