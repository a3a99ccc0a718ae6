"""Executors: where the units of work of :mod:`cxrlib.train.units` run.

- ``inline``: one after the other in this process (the behaviour before units; the default on
  a machine with fewer than two GPUs);
- ``local``: a pool of worker processes on this machine (spawned, so each starts clean), each
  pinned to one GPU with ``CUDA_VISIBLE_DEVICES`` (round robin when there are more workers than
  GPUs; none on a CPU-only machine, where ``local`` with N workers still runs N processes) and
  with its own torch thread count (default: the cores divided by the workers). The default with
  two GPUs or more, one worker per GPU;
- ``slurm``: SLURM jobs through submitit (:class:`SlurmExecutor`): a job array per call with a
  cap on the tasks running at once, partition, time, GPUs and CPUs per task, memory and extra
  sbatch options from a YAML file (:func:`read_slurm_config`); the job ids are kept in the run
  folder (``artifacts/shards/slurm/jobs.json``), so that a driver started again reattaches
  instead of submitting twice; ``wait=False`` (``--no-wait``) submits and stops
  (:class:`UnitsSubmitted`), and a later run merges.

Every executor calls ``on_done(spec, shard)`` in the driver process once a unit's shard is written;
the driver (:func:`cxrlib.train.units.run_units`) merges it there, so only one process writes the
tables. A Python exception in a unit fails the run: ``inline`` raises it as it is, ``local`` raises
:class:`UnitFailed` with the unit's traceback once the units already running have finished (their
shards are kept). A worker that dies (killed for memory, a crash of the interpreter) loses the
units it ran; they are run again up to ``retries`` times, then :class:`UnitLost` is raised.

A new executor is a subclass of :class:`Executor` (``run(specs, on_done)``) named in
:data:`EXECUTORS`.

The executor is chosen per call (``run_crossval(..., executor="local")``, an :class:`Executor`
or a name) or, by default, from the environment: ``CXR_EXECUTOR`` (``auto`` | ``inline`` |
``local`` | ``slurm``), ``CXR_WORKERS``, ``CXR_THREADS``, ``CXR_SLURM_CONFIG`` (the YAML file)
and ``CXR_NO_WAIT`` (``1``: submit and stop). ``python -m cxrlib run --executor local
--workers 2`` (or ``--executor slurm --slurm-config FILE.yaml [--no-wait]``) sets them for the
notebooks' kernels and records the executor in ``run.json``.
"""
from __future__ import annotations

import atexit
import os
import shutil
from concurrent.futures import CancelledError, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["Executor", "InlineExecutor", "LocalExecutor", "SlurmExecutor", "EXECUTORS",
           "UnitFailed", "UnitLost", "UnitsSubmitted", "get_executor", "executor_settings",
           "visible_gpus", "read_slurm_config", "SLURM_DEFAULTS", "SLURM_JOBS_FILE",
           "ENV_EXECUTOR", "ENV_WORKERS", "ENV_THREADS", "ENV_SLURM_CONFIG", "ENV_NO_WAIT"]

ENV_EXECUTOR = "CXR_EXECUTOR"
ENV_WORKERS = "CXR_WORKERS"
ENV_THREADS = "CXR_THREADS"
ENV_SLURM_CONFIG = "CXR_SLURM_CONFIG"
ENV_NO_WAIT = "CXR_NO_WAIT"

OnDone = Callable[["object", Path], None]


class UnitFailed(RuntimeError):
    """A unit raised in a worker; the message holds its traceback."""

    def __init__(self, label: str, traceback_text: str):
        self.label, self.traceback_text = label, traceback_text
        super().__init__(f"unit {label} failed:\n{traceback_text.rstrip()}")


class UnitLost(RuntimeError):
    """A unit's worker died more often than the retries allow."""


class Executor:
    """Runs units (:class:`cxrlib.train.units.FoldSpec`) and reports each shard to the driver."""

    name = "executor"

    def run(self, specs: Sequence, on_done: OnDone) -> None:
        """Run every spec; call ``on_done(spec, shard path)`` in this process as each ends."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What ``run.json`` records of the executor."""
        return {"name": self.name}


class InlineExecutor(Executor):
    """The units one after the other in this process."""

    name = "inline"

    def run(self, specs, on_done):
        from cxrlib.train.units import run_unit

        for spec in specs:
            on_done(spec, run_unit(spec))


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the devices torch
    counts (ids as text; empty on a CPU-only machine)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
        return []


def _init_worker(slots, gpus: list[str], threads: int) -> None:
    """A worker's start: take a slot, pin its GPU and set its thread count (before torch
    initialises CUDA or its thread pools)."""
    import signal

    # the driver owns Ctrl-C (and a Jupyter kernel's interrupt, sent to its process group): it
    # stops the workers itself, so they need not print a KeyboardInterrupt traceback each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    slot = slots.get()
    os.environ["CXR_WORKER_SLOT"] = str(slot)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(spec) -> tuple[str, str]:
    """Run one unit in a worker: ("ok", shard path) or ("error", traceback)."""
    import traceback
    from dataclasses import replace

    from cxrlib.train.units import run_unit

    if spec.device is not None and spec.device != "cpu":
        spec = replace(spec, device=None)  # the worker's own GPU is cuda:0
    try:
        return "ok", str(run_unit(spec))
    except Exception:  # noqa: BLE001 - reported to the driver with its traceback
        return "error", traceback.format_exc()


class LocalExecutor(Executor):
    """A pool of spawned worker processes on this machine, one GPU each.

    Parameters
    ----------
    workers : worker processes (default: one per visible GPU, at least one).
    threads : torch threads per worker (default: the cores divided by the workers, at least 1).
    gpus : GPU ids to pin the workers to (default :func:`visible_gpus`; empty: none).
    retries : times a unit whose worker died is run again.

    The pool is kept between calls (the workers keep their imports and the last view's images)
    until :meth:`close` or the end of the process.
    """

    name = "local"

    def __init__(self, workers: int | None = None, threads: int | None = None,
                 gpus: Sequence[str] | None = None, retries: int = 2):
        self.gpus = [str(g) for g in (visible_gpus() if gpus is None else gpus)]
        self.workers = int(workers) if workers else max(1, len(self.gpus))
        if self.workers < 1:
            raise ValueError(f"the local executor needs at least one worker, got {workers}")
        self.threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // self.workers)
        self.retries = int(retries)
        self._pool = None

    def describe(self) -> dict:
        return {"name": self.name, "workers": self.workers, "threads": self.threads,
                "gpus": list(self.gpus), "retries": self.retries}

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")
            slots = ctx.Queue()
            for i in range(self.workers):
                slots.put(i)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx,
                                             initializer=_init_worker,
                                             initargs=(slots, self.gpus, self.threads))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, specs, on_done):
        pending, attempts = list(specs), {}
        while pending:
            pool = self._get_pool()
            futures = {pool.submit(_run_in_worker, spec): spec for spec in pending}
            pending, failure, broken = [], None, False
            try:
                for future in as_completed(futures):
                    spec = futures[future]
                    try:
                        status, payload = future.result()
                    except CancelledError:
                        continue
                    except BrokenProcessPool:
                        broken = True
                        attempts[spec.shard_name] = attempts.get(spec.shard_name, 0) + 1
                        if attempts[spec.shard_name] > self.retries:
                            raise UnitLost(f"unit {spec.label}: its worker process died "
                                           f"{attempts[spec.shard_name]} times (killed for "
                                           "memory?); no retry left") from None
                        pending.append(spec)
                        continue
                    if status == "error":
                        if failure is None:
                            failure = (spec, payload)
                            for other in futures:  # let the running units finish
                                other.cancel()
                        continue
                    on_done(spec, Path(payload))
            except KeyboardInterrupt:
                self._drop_pool(kill=True)  # interrupted: stop the units running too
                raise
            except BaseException:
                for other in futures:
                    other.cancel()
                if broken:
                    self._drop_pool()
                raise
            if broken:
                self._drop_pool()
            if failure is not None:
                raise UnitFailed(failure[0].label, failure[1])

    def _drop_pool(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


class UnitsSubmitted(RuntimeError):
    """``--no-wait``: the units were submitted as SLURM jobs (or are still running) and this run
    stops here; the same run started again reattaches to them and merges their shards."""

    def __init__(self, n_submitted: int, n_running: int, jobs_file: Path):
        self.n_submitted, self.n_running, self.jobs_file = n_submitted, n_running, jobs_file
        super().__init__(
            f"{n_submitted} unit(s) submitted as SLURM jobs now, {n_running} submitted earlier "
            f"(job ids in {jobs_file}); run the same command again to reattach to them and "
            "merge their results (nothing is submitted twice)")


#: The settings of a SLURM executor (``--slurm-config FILE.yaml``), with their defaults:
#: partition (None: the cluster's default), time_min (job time limit), gpus_per_task,
#: cpus_per_task (also the torch threads of a unit), mem_gb (None: the partition's default),
#: array_parallelism (most array tasks running at once), retries (times a lost job - node
#: failure, preemption, out of memory, cancelled - is submitted again), poll_s (seconds between
#: checks of the jobs), sbatch (extra sbatch options, name -> value, e.g. ``account``, ``qos``,
#: ``constraint``), setup (shell lines run before Python in each job, e.g. ``module load
#: cuda``).
SLURM_DEFAULTS = {"partition": None, "time_min": 60, "gpus_per_task": 0, "cpus_per_task": 1,
                  "mem_gb": None, "array_parallelism": 8, "retries": 2, "poll_s": 10.0,
                  "sbatch": {}, "setup": []}
#: The file of ``artifacts/shards/slurm/`` with the SLURM job of each unit submitted and not
#: merged.
SLURM_JOBS_FILE = "jobs.json"


def read_slurm_config(path: str | Path | None = None, **overrides) -> dict:
    """The SLURM settings (:data:`SLURM_DEFAULTS`) from a YAML mapping file and ``overrides``.

    Raises ValueError naming the file for YAML that is not a mapping, an unknown key (with the
    valid ones) or a value of the wrong type.
    """
    import yaml

    given = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SLURM settings file not found: {path}")
        given = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(given, dict):
            raise ValueError(f"SLURM settings file {path} must hold a mapping (NAME: VALUE)")
    given.update({k: v for k, v in overrides.items() if v is not None})
    where = f" in {path}" if path else ""
    unknown = sorted(set(given) - set(SLURM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown SLURM setting(s) {unknown}{where}; the settings are "
                         f"{sorted(SLURM_DEFAULTS)}")
    out = {**SLURM_DEFAULTS, **given}
    for key in ("time_min", "gpus_per_task", "cpus_per_task", "array_parallelism", "retries"):
        if not isinstance(out[key], int) or isinstance(out[key], bool) or out[key] < 0:
            raise ValueError(f"SLURM setting {key}{where} must be a whole number >= 0, got "
                             f"{out[key]!r}")
    if not isinstance(out["sbatch"], dict):
        raise ValueError(f"SLURM setting sbatch{where} must be a mapping of sbatch options")
    if isinstance(out["setup"], str):
        out["setup"] = [out["setup"]]
    return out


def _run_in_job(spec) -> str:
    """A SLURM job: run one unit with the job's CPUs as torch threads (SLURM pins its GPUs with
    ``CUDA_VISIBLE_DEVICES``); return the shard path. An exception fails the job, and submitit
    hands its traceback to the driver."""
    from dataclasses import replace

    import torch

    from cxrlib.train.units import run_unit

    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))
    if spec.device is not None and spec.device != "cpu":
        spec = replace(spec, device=None)
    return str(run_unit(spec))


class SlurmExecutor(Executor):
    """Units as SLURM jobs through submitit: one job array per call (at most
    ``array_parallelism`` tasks at once), with the partition, time, GPUs and CPUs per task, memory
    and extra sbatch options of :func:`read_slurm_config`.

    The job id of each unit is written to ``artifacts/shards/slurm/jobs.json`` as soon as it is
    submitted, so that a driver started again (after a crash, or after ``wait=False``) reattaches
    to the jobs instead of submitting them twice; submitit's files (scripts, logs, pickles) go to
    ``artifacts/shards/slurm/<array id>/``. A job lost (node failure, preemption, out of memory,
    cancelled) is submitted again up to ``retries`` times, then :class:`UnitLost`; a Python
    exception in a unit raises :class:`UnitFailed` with its traceback. With ``wait=False`` the
    jobs are submitted and :class:`UnitsSubmitted` is raised.
    """

    name = "slurm"

    def __init__(self, config: str | Path | None = None, wait: bool = True, **overrides):
        self.config_path = str(config) if config else None
        self.settings = read_slurm_config(config, **overrides)
        self.wait = bool(wait)

    def describe(self) -> dict:
        return {"name": self.name, "config": self.config_path, "wait": self.wait,
                **self.settings}

    def _submitit(self, folder: Path):
        import submitit

        cfg = self.settings
        if shutil.which("srun") is None or shutil.which("sbatch") is None:
            raise RuntimeError("executor 'slurm' needs SLURM's srun and sbatch on the PATH: run "
                               "the study on a cluster's login node (or inside an allocation), "
                               "or choose --executor inline / local")
        executor = submitit.SlurmExecutor(folder=folder)
        params = {"time": int(cfg["time_min"]), "cpus_per_task": int(cfg["cpus_per_task"]),
                  "array_parallelism": int(cfg["array_parallelism"]),
                  "job_name": "cxr-unit"}
        if cfg["partition"]:
            params["partition"] = cfg["partition"]
        if cfg["gpus_per_task"]:
            params["gpus_per_task"] = int(cfg["gpus_per_task"])
        if cfg["mem_gb"]:
            params["mem"] = f"{int(cfg['mem_gb'] * 1024)}M"
        if cfg["sbatch"]:
            params["additional_parameters"] = dict(cfg["sbatch"])
        if cfg["setup"]:
            params["setup"] = list(cfg["setup"])
        executor.update_parameters(**params)
        return executor

    @staticmethod
    def _job(folder: str, job_id: str):
        import submitit

        return submitit.SlurmJob(folder=folder, job_id=job_id)

    def run(self, specs, on_done):
        import time

        from submitit.core.utils import FailedJobError, UncompletedJobError

        from cxrlib.train.units import MERGED_DIR, SHARDS_DIR

        if not specs:
            return
        shards = Path(specs[0].artifacts_dir) / SHARDS_DIR
        jobs_file, folder = shards / "slurm" / SLURM_JOBS_FILE, shards / "slurm" / "%A"
        known = _read_jobs(jobs_file)
        for name in [n for n in known if (shards / MERGED_DIR / f"{n}.json").is_file()]:
            del known[name]  # finished and merged while no driver watched
        tracked, to_submit = {}, []
        for spec in specs:
            entry = known.get(spec.shard_name)
            if entry:
                tracked[spec.shard_name] = (spec, self._job(entry["folder"], entry["job_id"]))
            else:
                to_submit.append(spec)
        n_running = len(tracked)
        if to_submit:
            jobs = self._submitit(folder).map_array(_run_in_job, to_submit)
            for spec, job in zip(to_submit, jobs):
                tracked[spec.shard_name] = (spec, job)
                known[spec.shard_name] = {"job_id": str(job.job_id), "folder": str(folder),
                                          "attempts": 1, "unit": spec.label,
                                          "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
        _write_jobs(jobs_file, known)
        if not self.wait:
            raise UnitsSubmitted(len(to_submit), n_running, jobs_file)
        while tracked:
            progressed = False
            for name, (spec, job) in list(tracked.items()):
                if not job.done():
                    continue
                progressed = True
                try:
                    shard = job.result()
                except FailedJobError as exc:  # the unit raised: its traceback is in exc
                    known.pop(name, None)  # a run started again submits it anew
                    _write_jobs(jobs_file, known)
                    raise UnitFailed(f"{spec.label} (SLURM job {job.job_id})", str(exc)) from None
                except UncompletedJobError as exc:  # lost: submit it again
                    entry = known[name]
                    if entry["attempts"] > self.settings["retries"]:
                        raise UnitLost(f"unit {spec.label}: SLURM job {job.job_id} was lost "
                                       f"{entry['attempts']} times, no retry left; the last: "
                                       f"{exc}") from None
                    job = self._submitit(folder).submit(_run_in_job, spec)
                    tracked[name] = (spec, job)
                    entry.update(job_id=str(job.job_id), attempts=entry["attempts"] + 1,
                                 submitted=time.strftime("%Y-%m-%d %H:%M:%S"))
                    _write_jobs(jobs_file, known)
                    continue
                on_done(spec, Path(shard))
                del tracked[name]
                known.pop(name, None)
                _write_jobs(jobs_file, known)
            if tracked and not progressed:
                time.sleep(float(self.settings["poll_s"]))


def _read_jobs(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_jobs(path: Path, jobs: dict) -> None:
    import json

    from cxrlib.train.units import _atomic_write

    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(jobs, indent=1),
                                                   encoding="utf-8"))


#: name -> executor class; ``auto`` picks ``local`` with two GPUs or more, else ``inline``.
EXECUTORS: dict[str, type[Executor]] = {"inline": InlineExecutor, "local": LocalExecutor,
                                        "slurm": SlurmExecutor}
_CACHE: dict[tuple, Executor] = {}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}"
                         ) from None


def executor_settings(name: str | None = None, workers: int | None = None,
                      threads: int | None = None, slurm_config: str | Path | None = None,
                      wait: bool | None = None) -> dict:
    """The executor a name and options resolve to, as ``run.json`` records it (``auto`` and
    the environment's defaults resolved; for ``slurm``, its settings file read and checked);
    nothing is started.

    Raises ValueError for an unknown name, a bad number of workers or bad SLURM settings.
    """
    name = name or os.environ.get(ENV_EXECUTOR) or "auto"
    workers = workers if workers is not None else _env_int(ENV_WORKERS)
    threads = threads if threads is not None else _env_int(ENV_THREADS)
    slurm_config = slurm_config or os.environ.get(ENV_SLURM_CONFIG) or None
    if wait is None:
        wait = os.environ.get(ENV_NO_WAIT, "").strip() not in ("1", "true", "yes")
    if name == "auto":
        name = "local" if len(visible_gpus()) > 1 else "inline"
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose one of "
                         f"{['auto'] + sorted(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if name == "inline":
        return {"name": "inline"}
    if name == "local":
        return LocalExecutor(workers, threads).describe()
    return SlurmExecutor(slurm_config, wait=wait).describe()


def get_executor(executor: str | Executor | None = None, **options) -> Executor:
    """An :class:`Executor`: ``executor`` itself, or the one it names (None: ``CXR_EXECUTOR``,
    else ``auto``); ``options`` (``workers``, ``threads``, ``slurm_config``, ``wait``) default
    to ``CXR_WORKERS``, ``CXR_THREADS``, ``CXR_SLURM_CONFIG`` and ``CXR_NO_WAIT``. Local
    executors are kept per settings, with their worker pools."""
    if isinstance(executor, Executor):
        return executor
    resolved = executor_settings(executor, options.get("workers"), options.get("threads"),
                                 options.get("slurm_config"), options.get("wait"))
    if resolved["name"] == "inline":
        return InlineExecutor()
    if resolved["name"] == "local":
        key = ("local", resolved["workers"], resolved["threads"], tuple(resolved["gpus"]))
        if key not in _CACHE:
            _CACHE[key] = LocalExecutor(resolved["workers"], resolved["threads"],
                                        resolved["gpus"])
        return _CACHE[key]
    return SlurmExecutor(resolved["config"], wait=resolved["wait"])


@atexit.register
def _close_pools() -> None:
    for executor in _CACHE.values():
        close = getattr(executor, "close", None)
        if close is not None:
            close()
