"""Run the study: execute the notebooks in order with papermill and render them to HTML.

``python -m cxrlib run --profile default`` runs every notebook on each cohort of the run and
writes::

    reports/<profile>-<date>/
        index.html            links to every report, run parameters, versions, durations
        run.json              the same, machine-readable
        <cohort>/             one folder per cohort (arias-noshortcut, arias, covidgr, or a real
                              manifest's name)
            NN_name.ipynb     the executed notebook
            NN_name.html      its rendering for reviewers (no code)
            tables/  figures/  artifacts/

Without ``--manifest`` a run carries the synthetic cohorts of
:data:`cxrlib.data.synthetic.COHORTS`, in that order: ``arias-noshortcut`` (``arias`` with the
shortcut removed, the control of the shortcut findings), ``arias`` (3 classes, 8 sources, for seed
001's tables) and ``covidgr`` (binary, for seed 000's). With ``--manifest`` it runs one cohort, a
real corpus. A notebook may limit itself to some synthetic cohorts with the notebook metadata
``{"cxr_study": {"cohorts": ["covidgr"]}}``; it then runs on those cohorts and on every real
manifest.

Parameters beyond the runner's own reach the notebooks that declare them (``-p NAME=VALUE``,
``--params FILE.yaml``, ``-p profile.FIELD=VALUE``; see :mod:`cxrlib.parameters`); they are
recorded in ``run.json`` and shown on ``index.html``.

One run, one folder (:mod:`cxrlib.run_folder`): the run folder's ``study.json`` holds the
settings (profile, overrides, seed, parameters) and each cohort's manifest hash; a run with other
settings, or another manifest for a cohort already there, is refused before anything runs,
unless ``fresh`` (``--fresh``) first moves the folder's content aside. A notebook that fails has
its outputs moved to ``<cohort>/stale/<notebook>/``; ``index.html`` shows every cohort of the
folder and each notebook's last state (``failed``; ``stale`` for one made before an earlier
notebook of its cohort failed).
"""
from __future__ import annotations

import datetime as dt
import html
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrlib.report.checklist import reviewer_reports_html
from cxrlib.report.landing import HEADLINE_CSS, headline_html, shown_path
from cxrlib.parameters import resolve_parameters
from cxrlib.paths import NOTEBOOKS_DIR, REPO_ROOT, REPORTS_DIR
from cxrlib.profiles import get_profile
from cxrlib.report.provenance import collect_provenance
from cxrlib.run_folder import (
    STALE_DIR,
    RunFolder,
    changed_outputs,
    check_run_settings,
    claim_cohorts,
    failed_outputs,
    output_files,
    read_run_claim,
    run_settings,
    set_aside_folder,
    set_aside_outputs,
    write_run_claim,
)

KERNEL_NAME = "cxr-study"


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""

    def __init__(self, notebook: str, cohort: str, cell: int | None, error: str, output: Path):
        self.notebook, self.cohort, self.cell, self.error, self.output = (
            notebook, cohort, cell, error, output)
        where = (f"cell {cell} of the executed notebook (0-based, after papermill's injected "
                 f"parameters cell)" if cell is not None else "an unknown cell")
        super().__init__(
            f"notebook {notebook} failed on cohort '{cohort}' in {where}: {error}\n"
            f"the executed notebook with the traceback is in {output}"
        )


class NotebookSubmitted(RuntimeError):
    """A notebook submitted its fold trainings as SLURM jobs and stopped (``--no-wait``,
    :class:`cxrlib.train.executors.UnitsSubmitted`); the same run started again reattaches to
    them."""

    def __init__(self, notebook: str, cohort: str, message: str):
        self.notebook, self.cohort = notebook, cohort
        super().__init__(f"notebook {notebook} on cohort '{cohort}': {message}")


#: The start of a :class:`NotebookFailed` error that is a ``--no-wait`` submission.
_SUBMITTED = "UnitsSubmitted: "


@dataclass
class NotebookResult:
    notebook: str
    cohort: str
    status: str  # "ok" | "failed" | "skipped" | "submitted" (--no-wait: its SLURM jobs run)
    seconds: float = 0.0
    ipynb: str | None = None
    html: str | None = None
    error: str | None = None
    started: str | None = None
    finished: str | None = None


@dataclass
class RunRecord:
    profile: str
    out_dir: str
    seed: int
    manifest: str | None
    cohorts: list[str]
    started: str
    finished: str | None = None
    seconds: float | None = None
    status: str = "running"
    versions: dict = field(default_factory=dict)
    results: list[NotebookResult] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    profile_overrides: dict = field(default_factory=dict)
    notebook_parameters: dict = field(default_factory=dict)
    settings_hash: str | None = None
    manifest_hashes: dict = field(default_factory=dict)
    #: the resolved profile as the notebooks used it (:meth:`Profile.as_dict` with overrides)
    profile_fields: dict = field(default_factory=dict)
    #: git, manifests, system and packages (:func:`cxrlib.report.provenance.collect_provenance`)
    provenance: dict = field(default_factory=dict)
    #: where the fold trainings ran (:func:`cxrlib.train.executors.executor_settings`: ``name``, and
    #: for ``local`` its workers, threads per worker and GPUs); not a setting of the run folder,
    #: since every executor gives the same tables
    executor: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunRecord":
        """Read back the ``run.json`` that :func:`write_index` wrote."""
        data = json.loads(Path(path).read_text())
        data["results"] = [NotebookResult(**r) for r in data.get("results", [])]
        return cls(**data)


def list_notebooks(only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR
                   ) -> list[Path]:
    """The study's notebooks (``NN_name.ipynb``) in order, optionally only those whose number
    prefix is in ``only`` (e.g. ``["00", "03"]``)."""
    found = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        wanted = {o.strip().zfill(2) for o in only if o.strip()}
        unknown = wanted - {p.name[:2] for p in found}
        if unknown:
            raise ValueError(
                f"no notebook numbered {sorted(unknown)} in {notebooks_dir}; "
                f"have {[p.name for p in found]}"
            )
        found = [p for p in found if p.name[:2] in wanted]
    if not found:
        raise FileNotFoundError(f"no notebooks found in {notebooks_dir}")
    return found


def notebook_cohorts(path: Path) -> list[str] | None:
    """The synthetic cohorts a notebook declares it applies to (names of
    :data:`cxrlib.data.synthetic.COHORTS`), or None for all."""
    meta = json.loads(Path(path).read_text()).get("metadata", {})
    return meta.get("cxr_study", {}).get("cohorts")


def check_kernel(kernel_name: str) -> None:
    """Raise a clear error when the Jupyter kernel the runner names is not installed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise RuntimeError(
            f"Jupyter kernel '{kernel_name}' is not installed. Run `make setup`, or register it "
            f"with `{sys.executable} -m ipykernel install --prefix {sys.prefix} "
            f"--name {kernel_name}`"
        ) from None


def versions() -> dict:
    """Versions of Python, the key packages and the git commit, for the report index."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("cxrlib", "torch", "torchvision", "fastai", "numpy", "pandas", "scikit-learn",
                "scikit-image", "pydicom", "papermill", "nbconvert", "grad-cam"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        out["git_commit"] = (commit or "unknown") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = "unknown"
    return out


#: The header Python prints above a warning (``/path/file.py:15: UserWarning: message``,
#: then the source line, indented): the file is a path of the machine (the kernel's temporary
#: cell file, the installation); a report keeps the category and the message.
_WARNING_HEADER = re.compile(r"^[^\n]*?\.py:\d+: (\w+): ([^\n]*\n?)(?:  [^\n]*\n?)?", re.M)


def plain_warnings(text: str) -> str:
    """``text`` (a cell's stderr) with every warning's file and line, and the echoed source
    line, left out: ``UserWarning: message``."""
    return _WARNING_HEADER.sub(r"\1: \2", text)


def render_html(ipynb: Path, html_path: Path, with_code: bool = False) -> Path:
    """Render an executed notebook to HTML; the reviewer version hides code cells and the file
    each warning came from (:func:`plain_warnings`)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
    if not with_code:
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "stream" and output.get("name") == "stderr":
                    output["text"] = plain_warnings(output["text"])
    exporter = HTMLExporter(
        exclude_input=not with_code,
        exclude_input_prompt=not with_code,
        exclude_output_prompt=True,
    )
    body, _ = exporter.from_notebook_node(nb)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _failed_cell(ipynb: Path) -> tuple[int | None, str]:
    """(cell number, 'Error: message') of the first cell with an error output in ``ipynb``."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, f"{out.get('ename')}: {out.get('evalue')}"
    return None, "unknown error"


def _last_started_cell(ipynb: Path) -> int | None:
    """The last cell papermill started in ``ipynb`` (the one running when execution stopped)."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    started = [i for i, cell in enumerate(nb.cells)
               if cell.get("metadata", {}).get("papermill", {}).get("start_time")]
    return started[-1] if started else None


def _stopped_error(exc: BaseException, cell_timeout_s: int) -> str | None:
    """The message for a cell that ran past the limit or whose kernel died; None for another
    exception."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    limit = (f"the cell time limit is {cell_timeout_s} s (profile field cell_timeout_s; "
             f"-p profile.cell_timeout_s=SECONDS changes it, 0: no limit)" if cell_timeout_s
             else "no cell time limit was set (profile field cell_timeout_s = 0)")
    if isinstance(exc, CellTimeoutError):
        return (f"CellTimeout: the cell ran past the cell time limit of {cell_timeout_s} s and "
                f"was stopped (profile field cell_timeout_s; -p profile.cell_timeout_s=SECONDS "
                f"changes it, 0: no limit)")
    if isinstance(exc, DeadKernelError):
        return f"DeadKernel: the kernel died while running the cell ({exc}); {limit}"
    return None


def _mark_stopped_cell(ipynb: Path, cell: int, message: str) -> None:
    """Add ``message`` as an error output of cell ``cell`` of the executed notebook, so that its
    rendering shows where and why it stopped."""
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    ename, _, evalue = message.partition(": ")
    nb.cells[cell].setdefault("outputs", []).append(nbformat.v4.new_output(
        "error", ename=ename, evalue=evalue, traceback=[message]))
    nbformat.write(nb, ipynb)


def execute_notebook(
    notebook: Path,
    out_dir: Path,
    parameters: dict,
    cohort: str,
    kernel_name: str = KERNEL_NAME,
    html: bool = True,
    log_output: bool = False,
    cell_timeout_s: int = 0,
) -> NotebookResult:
    """Execute one notebook with papermill into ``out_dir`` and render its HTML.

    ``cell_timeout_s`` (the profile's, :attr:`cxrlib.profiles.Profile.cell_timeout_s`; 0: none)
    is the longest one cell may run. Raises :class:`NotebookFailed` naming the notebook and cell
    when a cell raises, runs past that limit (the message names the limit) or its kernel dies;
    the partly executed notebook (with the traceback, or the limit as the cell's error output)
    and its HTML are still written.
    """
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    out_nb = out_dir / notebook.name
    out_html = out_dir / (notebook.stem + ".html")
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(notebook), str(out_nb), parameters=parameters, kernel_name=kernel_name,
            language="python", cwd=str(out_dir), progress_bar=False, log_output=log_output,
            execution_timeout=cell_timeout_s if cell_timeout_s and cell_timeout_s > 0 else None,
        )
    except pm.PapermillExecutionError as exc:
        if html:
            render_html(out_nb, out_html, with_code=True)
        first_line = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        raise NotebookFailed(notebook.name, cohort, exc.cell_index,
                             f"{exc.ename}: {exc.evalue} (execution count {exc.exec_count}, "
                             f"code starting `{first_line[:80]}`)", out_nb) from None
    except Exception as exc:  # cell time limit, kernel died, bad parameters...
        stopped = _stopped_error(exc, cell_timeout_s)
        if stopped is not None:
            cell = _last_started_cell(out_nb) if out_nb.exists() else None
            if cell is not None:
                _mark_stopped_cell(out_nb, cell, stopped)
            if html and out_nb.exists():
                render_html(out_nb, out_html, with_code=True)
            raise NotebookFailed(notebook.name, cohort, cell, stopped, out_nb) from None
        cell, err = _failed_cell(out_nb) if out_nb.exists() else (None, repr(exc))
        raise NotebookFailed(notebook.name, cohort, cell, f"{err} ({exc!r})", out_nb) from None
    seconds = time.perf_counter() - t0
    if html:
        render_html(out_nb, out_html)
    return NotebookResult(notebook.name, cohort, "ok", round(seconds, 1), out_nb.name,
                          out_html.name if html else None)


def default_out_dir(profile: str) -> Path:
    return REPORTS_DIR / f"{profile}-{dt.date.today().isoformat()}"


def _cohort_names(manifest: str | None, cohorts: list[str] | None) -> list[str]:
    """The cohorts of a run: the manifest's file stem, or the synthetic cohorts asked for."""
    if manifest:
        return [Path(manifest).stem]
    from cxrlib.data.synthetic import COHORTS

    names = list(cohorts or COHORTS)
    bad = [c for c in names if c not in COHORTS]
    if bad:
        raise ValueError(f"unknown synthetic cohort(s) {bad}; choose from {list(COHORTS)}")
    return names


def _cohort_manifests(names: list[str], manifest: str | None, prof, seed: int, log
                      ) -> dict[str, Path]:
    """Cohort -> manifest CSV: the real manifest, or each synthetic cohort's (generated first
    when it is not cached yet)."""
    if manifest:
        return {names[0]: Path(manifest)}
    from cxrlib.data.synthetic import cohort_spec, default_cohort

    found = {}
    for name in names:
        preset, knob = cohort_spec(name)
        log(f"[{name}] synthetic cohort ({preset} preset, shortcut {knob:g}, {prof.name} profile)")
        found[name] = Path(default_cohort(preset, prof, seed=seed, shortcut=knob,
                                          progress=False))
    return found


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="milliseconds")


def _rebuild_flow(cohort_dir: Path, moved: list[str]) -> list[str]:
    """Rebuild ``tables/flow.csv`` (and ``.md``) when a failed notebook's flow record was set
    aside; returns the files rebuilt (none otherwise)."""
    from cxrlib.flow import FLOW_DIR, flow_table

    if not (any(m.startswith(f"artifacts/{FLOW_DIR}/") for m in moved)
            and (cohort_dir / "tables" / "flow.csv").is_file()):
        return []
    run = RunFolder(cohort_dir)
    run.save_table(flow_table(run), "flow")
    return ["tables/flow.csv", "tables/flow.md"]


def run_notebook(nb: Path, cohort: str, out: Path, params: dict, claim: dict, record: RunRecord,
                 kernel_name: str = KERNEL_NAME, html: bool = True, cell_timeout_s: int = 0
                 ) -> NotebookResult:
    """Execute one notebook into ``out/<cohort>`` and record it in ``record`` and in the run
    folder's claim (``study.json``: status, start, the output files it wrote).

    When it fails (or is interrupted), its outputs (written now or in its last recorded run,
    and by no other notebook: :func:`cxrlib.run_folder.failed_outputs`) are moved to
    ``<cohort>/stale/<notebook>/``, ``tables/flow.csv`` is rebuilt without its record, the
    other files that other notebooks write too are listed as ``stale`` in its entry, and the
    error is re-raised (:class:`NotebookFailed`).
    """
    cohort_dir = out / cohort
    entries = claim["cohorts"][cohort]["notebooks"]
    before, started = output_files(cohort_dir), _now()
    try:
        res = execute_notebook(nb, cohort_dir, params, cohort, kernel_name, html,
                               cell_timeout_s=cell_timeout_s)
    except NotebookFailed as exc:
        if not exc.error.startswith(_SUBMITTED):
            raise _failed(exc, nb, cohort, out, cohort_dir, claim, entries, record, before,
                          started, html)
        # --no-wait: its units run as SLURM jobs; nothing failed, nothing is set aside
        message = exc.error[len(_SUBMITTED):].split(" (execution count")[0]
        res = NotebookResult(nb.name, cohort, "submitted", ipynb=nb.name,
                             html=nb.stem + ".html" if html else None, error=message,
                             started=started, finished=_now())
        entries[nb.name] = {**asdict(res), "outputs": changed_outputs(cohort_dir, before)}
        record.results.append(res)
        write_run_claim(out, claim)
        raise NotebookSubmitted(nb.name, cohort, message) from None
    except KeyboardInterrupt as exc:
        raise _failed(exc, nb, cohort, out, cohort_dir, claim, entries, record, before, started,
                      html)
    res.started, res.finished = started, _now()
    entries[nb.name] = {**asdict(res), "outputs": changed_outputs(cohort_dir, before)}
    record.results.append(res)
    write_run_claim(out, claim)
    return res


def _failed(exc, nb: Path, cohort: str, out: Path, cohort_dir: Path, claim: dict, entries: dict,
            record: RunRecord, before: dict, started: str, html: bool) -> BaseException:
    """Record a notebook that failed (or was interrupted), set its outputs aside; return the
    exception to raise."""
    error = str(exc).splitlines()[0] if isinstance(exc, NotebookFailed) else "interrupted"
    res = NotebookResult(nb.name, cohort, "failed", ipynb=nb.name,
                         html=nb.stem + ".html" if html else None, error=error,
                         started=started, finished=_now())
    own, shared = failed_outputs(entries, nb.name, changed_outputs(cohort_dir, before))
    moved = set_aside_outputs(cohort_dir, nb.stem, own)
    rebuilt = _rebuild_flow(cohort_dir, moved)
    entries[nb.name] = {**asdict(res), "started": started, "outputs": [],
                        "set_aside": moved, "stale": [f for f in shared if f not in rebuilt]}
    record.results.append(res)
    write_run_claim(out, claim)
    return exc


def run_study(
    profile: str = "default",
    manifest: str | Path | None = None,
    out_dir: str | Path | None = None,
    only: list[str] | None = None,
    seed: int = 0,
    cohorts: list[str] | None = None,
    kernel_name: str = KERNEL_NAME,
    html: bool = True,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    parameters: dict | None = None,
    fresh: bool = False,
    executor: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    slurm_config: str | Path | None = None,
    no_wait: bool = False,
    log=print,
) -> RunRecord:
    """Run the notebooks in order on each cohort and write the run folder and its index.

    Parameters
    ----------
    profile : ``smoke`` | ``default`` | ``paper``.
    manifest : a real corpus's manifest CSV; None runs the synthetic cohorts.
    out_dir : run folder; default ``reports/<profile>-<date>``.
    only : notebook number prefixes to run (the others are not run; their earlier artifacts in
        ``out_dir`` are read by the ones that run).
    cohorts : synthetic cohorts to run, in this order (default every cohort of
        :data:`cxrlib.data.synthetic.COHORTS`); ignored with ``manifest``.
    parameters : notebook parameters and ``profile.FIELD`` overrides (name -> value, see
        :func:`cxrlib.parameters.resolve_parameters`); each notebook receives those it declares.
    fresh : first move the run folder's content aside (to ``<out_dir>.replaced-<date-time>``,
        :func:`cxrlib.run_folder.set_aside_folder`); nothing is deleted.
    executor, workers, threads : where the notebooks train their folds
        (:mod:`cxrlib.train.executors`: ``auto`` | ``inline`` | ``local`` | ``slurm``; None:
        ``CXR_EXECUTOR``, else ``auto``), the local executor's worker processes and torch threads
        per worker; passed to the notebooks' kernels as ``CXR_EXECUTOR``, ``CXR_WORKERS``,
        ``CXR_THREADS`` and recorded in ``run.json``.
    slurm_config, no_wait : the SLURM executor's settings file (YAML,
        :func:`cxrlib.train.executors.read_slurm_config`) and whether to submit the jobs and stop: a
        notebook that submitted is ``submitted`` (its outputs are kept, the cohort's later
        notebooks wait), the run's status is ``submitted``, and the same run started again
        reattaches to the jobs and merges their results.

    Returns the :class:`RunRecord`; raises :class:`NotebookFailed` at the first failing notebook
    after writing the index (which shows the failure), and
    :class:`cxrlib.run_folder.RunFolderConflict` (a ValueError), before anything runs, when the
    run folder belongs to other settings or holds another manifest for one of the cohorts.
    """
    from cxrlib.train.executors import (
        ENV_EXECUTOR, ENV_NO_WAIT, ENV_SLURM_CONFIG, ENV_THREADS, ENV_WORKERS, executor_settings,
    )

    notebooks = list_notebooks(only, notebooks_dir)
    resolved = resolve_parameters(parameters or {}, notebooks)
    executor_record = executor_settings(  # checked before anything runs
        executor, workers, threads, str(Path(slurm_config).resolve()) if slurm_config else None,
        wait=not no_wait)
    prof = get_profile(profile, resolved.profile_overrides)
    check_kernel(kernel_name)
    out = Path(out_dir).resolve() if out_dir else default_out_dir(prof.name)
    manifest = str(Path(manifest).resolve()) if manifest else None
    names = _cohort_names(manifest, cohorts)
    if fresh and (aside := set_aside_folder(out)):
        log(f"--fresh: the earlier content of {out} was moved to {aside}")
    settings = run_settings(prof.name, resolved.profile_overrides, seed, resolved.given)
    claim = check_run_settings(out, settings)  # before any cohort is generated
    cohort_manifests = _cohort_manifests(names, manifest, prof, seed, log)
    claim_cohorts(claim, out, cohort_manifests)
    out.mkdir(parents=True, exist_ok=True)
    write_run_claim(out, claim)
    record = RunRecord(profile=prof.name, out_dir=str(out), seed=seed, manifest=manifest,
                       cohorts=names, started=dt.datetime.now().isoformat(timespec="seconds"),
                       versions=versions(), parameters=resolved.given,
                       profile_overrides=resolved.profile_overrides,
                       notebook_parameters={nb: {k: v for k, v in p.items()
                                                 if k != "profile_overrides"}
                                            for nb, p in resolved.per_notebook.items()
                                            if set(p) - {"profile_overrides"}},
                       settings_hash=claim["settings_hash"],
                       manifest_hashes={n: claim["cohorts"][n]["manifest_hash"] for n in names},
                       profile_fields=prof.as_dict(),
                       provenance=collect_provenance(cohort_manifests),
                       executor=executor_record)
    t_run = time.perf_counter()
    env = {ENV_EXECUTOR: executor_record["name"],
           ENV_WORKERS: str(executor_record.get("workers") or ""),
           ENV_THREADS: str(executor_record.get("threads") or ""),
           ENV_SLURM_CONFIG: str(executor_record.get("config") or ""),
           ENV_NO_WAIT: "" if executor_record.get("wait", True) else "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the notebooks' kernels inherit the runner's environment
    submitted: list[str] = []
    try:
        for name in names:
            for nb in notebooks:
                applies_to = notebook_cohorts(nb)
                if applies_to is not None and not manifest and name not in applies_to:
                    now = _now()
                    record.results.append(NotebookResult(nb.name, name, "skipped", started=now,
                                                         finished=now))
                    claim["cohorts"][name]["notebooks"][nb.name] = {
                        **asdict(record.results[-1]), "outputs": []}
                    log(f"[{name}] {nb.stem}: not for this cohort, skipped")
                    continue
                log(f"[{name}] {nb.stem}: running")
                params = {"profile": prof.name, "cohort": name, "manifest": manifest or "",
                          "run_dir": str(out / name), "seed": seed, "interactive": False,
                          **resolved.per_notebook.get(nb.name, {})}
                try:
                    res = run_notebook(nb, name, out, params, claim, record, kernel_name, html,
                                       cell_timeout_s=prof.cell_timeout_s)
                except NotebookSubmitted as exc:
                    submitted.append(str(exc))
                    log(f"[{name}] {nb.stem}: submitted SLURM jobs (--no-wait); this cohort's "
                        "later notebooks wait for the next run")
                    break
                except (NotebookFailed, KeyboardInterrupt):
                    record.status = "failed"
                    log(f"[{name}] {nb.stem}: FAILED (its outputs moved to "
                        f"{name}/{STALE_DIR}/{nb.stem}/)")
                    raise
                log(f"[{name}] {nb.stem}: ok in {res.seconds:.0f} s")
        record.status = "submitted" if submitted else "ok"
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        record.finished = dt.datetime.now().isoformat(timespec="seconds")
        record.seconds = round(time.perf_counter() - t_run, 1)
        write_run_claim(out, claim)
        write_index(record, out)
    return record


def _rel_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob(pattern)) if folder.is_dir() else []


def _flow_html(path: Path, cohort: str) -> str:
    """The cohort's flow of images (``tables/flow.csv``) as an HTML table, one row per step."""
    import pandas as pd

    from cxrlib.flow import OUTCOMES, flow_summary

    esc = html.escape
    summary = flow_summary(pd.read_csv(path, keep_default_na=False))
    rows = "".join(
        f"<tr><td>{esc(str(r['step']))}</td>"
        + "".join(f"<td>{int(r[o])}</td>" for o in OUTCOMES)
        + f"<td><small>{esc(str(r['reasons']))}</small></td></tr>" for _, r in summary.iterrows())
    return (f"<p>Flow of images (<a href='{esc(cohort)}/tables/flow.csv'>flow.csv</a>): images "
            "in, then what each step analysed, flagged and left out, with the reasons.</p>"
            "<table><tr><th>step</th>" + "".join(f"<th>{o}</th>" for o in OUTCOMES)
            + "<th>reasons</th></tr>" + rows + "</table>")


def notebook_states(claim: dict) -> list[dict]:
    """The last state of every notebook of every cohort of a run folder, for the index.

    ``claim`` is the folder's ``study.json`` (:mod:`cxrlib.run_folder`). Returns one entry per
    cohort and notebook (in the claim's cohort order, notebooks by name) with the keys of
    :class:`NotebookResult` and ``started``, ``set_aside``, ``stale``; an ``ok`` notebook made
    before an earlier notebook of its cohort failed becomes ``stale`` (it read outputs that
    were then set aside), with the reason in ``error``.
    """
    rows = []
    for cohort in claim.get("cohorts", {}).values():
        entries = cohort.get("notebooks", {})
        for name in sorted(entries):
            row = dict(entries[name])
            failed_after = [n for n in sorted(entries) if n < name
                            and entries[n].get("status") == "failed"
                            and entries[n].get("started", "") > row.get("started", "")]
            if row.get("status") == "ok" and failed_after:
                row["status"] = "stale"
                row["error"] = (f"made before {failed_after[0]} failed: it read outputs that "
                                "were then set aside; rerun it")
            rows.append(row)
    return rows


def _report_row(r: dict, esc=html.escape) -> str:
    """One row of the index's report table (an entry of :func:`notebook_states`)."""
    cohort, status = r["cohort"], r.get("status", "")
    link = (f"<a href='{esc(cohort)}/{esc(r['html'])}'>{esc(r['html'])}</a>"
            if r.get("html") else "")
    nb = (f"<a href='{esc(cohort)}/{esc(r['ipynb'])}'>{'with code' if link else esc(r['ipynb'])}"
          "</a>" if r.get("ipynb") else "")
    notes = [r["error"]] if r.get("error") else []
    if r.get("set_aside"):
        notes.append(f"its {len(r['set_aside'])} output file(s) were moved to "
                     f"{cohort}/{STALE_DIR}/{Path(r['notebook']).stem}/")
    if r.get("stale"):
        notes.append("kept but stale (other notebooks write them too): " + ", ".join(r["stale"]))
    note = "".join(f"<br><small>{esc(n)}</small>" for n in notes)
    return (f"<tr><td>{esc(cohort)}</td><td>{esc(r['notebook'])}</td>"
            f"<td class='{esc(status)}'>{esc(status)}{note}</td>"
            f"<td class='nowrap'>{esc(str(r.get('started') or '')[:16].replace('T', ' '))}</td>"
            f"<td>{r.get('seconds') or 0:.0f}</td>"
            f"<td>{link}{f' ({nb})' if link and nb else nb}</td></tr>")


def _provenance_html(prov: dict, esc=html.escape) -> str:
    """The index's provenance section: commit, manifests and their hashes, machine, packages
    (:func:`cxrlib.report.provenance.collect_provenance`; empty for a record without any)."""
    if not prov:
        return ""
    git = prov.get("git") or {}
    commit = (f"<code>{esc(git['commit'])}</code>"
              + (" <b>with uncommitted changes (dirty)</b>" if git.get("dirty") else " (clean)")
              if git.get("commit") else esc(git.get("error") or "unknown"))
    rows = "".join(
        f"<tr><td>{esc(name)}</td><td><code>{esc(shown_path(m.get('path')))}</code><br>"
        f"<small>sha256 {esc(str(m.get('sha256')))}</small></td><td>"
        + (f"<code>{esc(shown_path(m['sidecar']))}</code><br><small>sha256 "
           f"{esc(str(m.get('sidecar_sha256')))}</small>" if m.get("sidecar") else "none")
        + f"</td><td>{m.get('images', '')}</td><td><small>"
        + esc(", ".join(f"{k}: {v}" for k, v in (m.get("images_per_source") or {}).items()))
        + "</small></td></tr>" for name, m in (prov.get("manifests") or {}).items())
    system = prov.get("system") or {}
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver') or 'unknown'}, CUDA "
                     f"{g.get('cuda')})" for g in system.get("gpus") or []) or "none"
    packages = prov.get("packages") or []
    return (
        "<h2 id='provenance'>Provenance</h2>"
        f"<p>Code: git commit {commit}.</p>"
        + ("<table class='prov'><tr><th>cohort</th><th>manifest</th><th>sidecar</th><th>images</th>"
           "<th>images per source</th></tr>" + rows + "</table>" if rows else "")
        + "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in (
            ("Python", f"{system.get('python')} ({system.get('python_implementation')})"),
            ("OS", system.get("os")), ("CPU", f"{system.get('cpu')} "
                                              f"({system.get('cpu_count')} logical cores)"),
            ("GPU", gpus)) if system) + "</table>"
        + (f"<details><summary>{len(packages)} installed packages</summary><p class='wrap'>"
           "<small>" + esc(", ".join(packages)) + "</small></p></details>" if packages else ""))


def _caveat(record: RunRecord, prof) -> str:
    """What the run's numbers can show, for the top of the index: synthetic cohorts, and a
    profile below the papers' scale (from its fields)."""
    said = []
    if not record.manifest:
        said.append("These numbers come from synthetic cohorts (cxrlib.data.synthetic): they test "
                    "the study's methods against a known truth, and none of them transfers to "
                    "patients.")
    if not prof.paper_schedules or prof.image_size < 224 or prof.cls_width < 1:
        said.append(f"The {prof.name} profile trains at reduced scale ({prof.image_size} px "
                    f"inputs, network width {prof.cls_width:g}, {prof.epochs} epoch(s), "
                    f"{min(prof.cls_folds, prof.folds)} of {prof.folds} folds x "
                    f"{prof.repetitions} repetition(s); the papers: 224 px, full width, their "
                    "own schedules), so the numbers check the pipeline, not the papers' claims.")
    return " ".join(said)


def write_index(record: RunRecord, out: Path) -> Path:
    """Write ``run.json`` (this run) and ``index.html`` (every cohort of the folder, each
    notebook's last state from ``study.json``; this run's results when there is none)."""
    (out / "run.json").write_text(json.dumps(asdict(record), indent=2))
    claim = read_run_claim(out) or {"cohorts": {}}
    states = notebook_states(claim) or [{**asdict(r), "started": r.started or record.started}
                                        for r in record.results]
    cohorts = list(claim["cohorts"]) or record.cohorts
    stale = {(r["cohort"], f) for r in states for f in r.get("stale") or []}
    esc = html.escape
    prof = get_profile(record.profile, record.profile_overrides)
    reviewer = reviewer_reports_html(out, prof.bootstrap, record.seed)  # checklist, model cards
    problems = [f"{r['cohort']}/{r['notebook']} {r.get('status')}" for r in states
                if r.get("status") in ("failed", "stale")]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cxr-study: {esc(record.profile)} run</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "padding:0 1em;color:#222;line-height:1.45}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em;max-width:100%}"
        "td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left;vertical-align:top;"
        "overflow-wrap:break-word}th{background:#f3f3f3}"
        ".ok{color:#1a7f37}.failed{color:#c0392b;font-weight:bold}.skipped{color:#888}"
        ".stale{color:#b7791f;font-weight:bold}.wrap{overflow-wrap:anywhere;white-space:normal}"
        ".prov code,.prov small{overflow-wrap:anywhere}"
        "nav a{margin-right:1em}code{background:#f6f6f6;padding:0 .2em;overflow-wrap:break-word}"
        + HEADLINE_CSS + "</style></head><body>",
        "<h1>cxr-study: reproduced tables and figures</h1>",
        f"<p>Profile <b>{esc(record.profile)}</b>, seed {record.seed}, "
        + (f"manifest <code>{esc(shown_path(record.manifest))}</code>" if record.manifest
           else "synthetic cohorts")
        + f"; last run started {esc(record.started)}, {record.seconds or 0:.0f} s in all; status "
        f"<span class='{esc(record.status)}'>{esc(record.status)}</span>.</p>",
        "<nav><a href='#findings'>Headline findings</a><a href='#reports'>Reports</a>"
        "<a href='#reviewers'>Checklist and model cards</a><a href='#cohorts'>Cohorts</a>"
        "<a href='#provenance'>Provenance</a></nav>",
        headline_html(out, _caveat(record, prof), problems),
        "<h2 id='reports'>Reports</h2><p>Every cohort of this run folder, each notebook's last "
        "run: the report for reviewers (no code) and the executed notebook with its code.</p>"
        "<table><tr><th>cohort</th><th>notebook</th><th>status</th><th>started</th>"
        "<th>seconds</th><th>report</th></tr>",
    ]
    parts += [_report_row(r) for r in states]
    parts += ["</table>", f"<div id='reviewers'>{reviewer}</div>", "<div id='cohorts'></div>"]
    for name in cohorts:
        cdir = out / name
        tables = _rel_files(cdir / "tables", "*.csv")
        figures = _rel_files(cdir / "figures", "*.png")
        entry = claim["cohorts"].get(name, {})
        source, digest = entry.get("manifest"), entry.get("manifest_hash")
        parts.append(f"<h2>Cohort <code>{esc(name)}</code></h2>"
                     + (f"<p>Manifest <code>{esc(shown_path(source))}</code>"
                        + (f" <small>(content hash {esc(str(digest))})</small>" if digest else "")
                        + ".</p>" if source else ""))
        if (cdir / "tables" / "flow.csv").is_file():
            parts.append(_flow_html(cdir / "tables" / "flow.csv", name))
        if tables:
            parts.append("<p>Tables: " + ", ".join(
                f"<a href='{esc(name)}/tables/{esc(t.name)}'>{esc(t.stem)}</a>"
                + (" (stale)" if (name, f"tables/{t.name}") in stale else "")
                for t in tables) + "</p>")
        if figures:
            parts.append("<p>Figures: " + ", ".join(
                f"<a href='{esc(name)}/figures/{esc(f.name)}'>{esc(f.stem)}</a>"
                for f in figures) + "</p>")
    if record.parameters:
        parts.append("<h2>Parameters given</h2><table><tr><th>name</th><th>value</th>"
                     "<th>received by</th></tr>" + "".join(
                         f"<tr><th>{esc(k)}</th><td><code>{esc(repr(v))}</code></td><td>"
                         + esc(", ".join(nb for nb, p in record.notebook_parameters.items()
                                         if k in p) or ("every notebook (profile field)"
                                                        if k.startswith("profile.") else ""))
                         + "</td></tr>" for k, v in record.parameters.items()) + "</table>")
    changed = set(record.profile_overrides)
    parts.append("<h2>Profile</h2><table>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}"
        f"{' <b>(overridden)</b>' if k in changed else ''}</td></tr>"
        for k, v in prof.as_dict().items()) + "</table>")
    parts.append("<h2>Versions</h2><table>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in record.versions.items())
        + "</table>")
    parts.append(_provenance_html(record.provenance))
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
