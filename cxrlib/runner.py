"""Run the study: execute the notebooks in order with papermill and render them to HTML.

``python -m cxrlib run --profile default`` runs every notebook on each cohort of the run and writes::

    reports/<profile>-<date>/
        index.html            links to every report, run parameters, versions, durations
        run.json              the same, machine-readable
        <cohort>/             one folder per cohort (arias-noshortcut, arias, covidgr, or a real
                              manifest's name)
            NN_name.ipynb     the executed notebook
            NN_name.html      its rendering for reviewers (no code)
            tables/  figures/  artifacts/

Without ``--manifest`` a run carries the synthetic cohorts of :data:`cxrlib.synthetic.COHORTS`, in
that order: ``arias-noshortcut`` (``arias`` with the shortcut removed, the control of the shortcut
findings), ``arias`` (3 classes, 8 sources, for seed 001's tables) and ``covidgr`` (binary, for seed
000's). With ``--manifest`` it runs one cohort, a real corpus. A notebook may limit itself to some
synthetic cohorts with the notebook metadata ``{"cxr_study": {"cohorts": ["covidgr"]}}``; it then
runs on those cohorts and on every real manifest.

Parameters beyond the runner's own reach the notebooks that declare them (``-p NAME=VALUE``,
``--params FILE.yaml``, ``-p profile.FIELD=VALUE``; see :mod:`cxrlib.parameters`); they are
recorded in ``run.json`` and shown on ``index.html``.
"""
from __future__ import annotations

import datetime as dt
import html
import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrlib.paths import NOTEBOOKS_DIR, REPO_ROOT, REPORTS_DIR
from cxrlib.parameters import resolve_parameters
from cxrlib.profiles import get_profile

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


@dataclass
class NotebookResult:
    notebook: str
    cohort: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    ipynb: str | None = None
    html: str | None = None
    error: str | None = None


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

    @classmethod
    def from_json(cls, path: str | Path) -> "RunRecord":
        """Read back the ``run.json`` that :func:`write_index` wrote."""
        data = json.loads(Path(path).read_text())
        data["results"] = [NotebookResult(**r) for r in data.get("results", [])]
        return cls(**data)


def list_notebooks(only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
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
    :data:`cxrlib.synthetic.COHORTS`), or None for all."""
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
            f"with `{sys.executable} -m ipykernel install --prefix {sys.prefix} --name {kernel_name}`"
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


def render_html(ipynb: Path, html_path: Path, with_code: bool = False) -> Path:
    """Render an executed notebook to HTML; the reviewer version hides code cells."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(ipynb, as_version=4)
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


def execute_notebook(
    notebook: Path,
    out_dir: Path,
    parameters: dict,
    cohort: str,
    kernel_name: str = KERNEL_NAME,
    html: bool = True,
    log_output: bool = False,
) -> NotebookResult:
    """Execute one notebook with papermill into ``out_dir`` and render its HTML.

    Raises :class:`NotebookFailed` naming the notebook and cell when a cell raises; the partly
    executed notebook (with the traceback) and its HTML are still written.
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
        )
    except pm.PapermillExecutionError as exc:
        if html:
            render_html(out_nb, out_html, with_code=True)
        first_line = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        raise NotebookFailed(notebook.name, cohort, exc.cell_index,
                             f"{exc.ename}: {exc.evalue} (execution count {exc.exec_count}, "
                             f"code starting `{first_line[:80]}`)", out_nb) from None
    except Exception as exc:  # kernel died, bad parameters...
        cell, err = _failed_cell(out_nb) if out_nb.exists() else (None, repr(exc))
        raise NotebookFailed(notebook.name, cohort, cell, f"{err} ({exc!r})", out_nb) from None
    seconds = time.perf_counter() - t0
    if html:
        render_html(out_nb, out_html)
    return NotebookResult(notebook.name, cohort, "ok", round(seconds, 1), out_nb.name,
                          out_html.name if html else None)


def default_out_dir(profile: str) -> Path:
    return REPORTS_DIR / f"{profile}-{dt.date.today().isoformat()}"


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
        :data:`cxrlib.synthetic.COHORTS`); ignored with ``manifest``.
    parameters : notebook parameters and ``profile.FIELD`` overrides (name -> value, see
        :func:`cxrlib.parameters.resolve_parameters`); each notebook receives those it declares.

    Returns the :class:`RunRecord`; raises :class:`NotebookFailed` at the first failing notebook
    after writing the index (which shows the failure).
    """
    notebooks = list_notebooks(only, notebooks_dir)
    resolved = resolve_parameters(parameters or {}, notebooks)
    prof = get_profile(profile, resolved.profile_overrides)
    check_kernel(kernel_name)
    out = Path(out_dir).resolve() if out_dir else default_out_dir(prof.name)
    out.mkdir(parents=True, exist_ok=True)
    if manifest:
        manifest = str(Path(manifest).resolve())
        names = [Path(manifest).stem]
    else:
        from cxrlib.synthetic import COHORTS

        names = list(cohorts or COHORTS)
        bad = [c for c in names if c not in COHORTS]
        if bad:
            raise ValueError(f"unknown synthetic cohort(s) {bad}; choose from {list(COHORTS)}")
    record = RunRecord(profile=prof.name, out_dir=str(out), seed=seed, manifest=manifest,
                       cohorts=names, started=dt.datetime.now().isoformat(timespec="seconds"),
                       versions=versions(), parameters=resolved.given,
                       profile_overrides=resolved.profile_overrides,
                       notebook_parameters={nb: {k: v for k, v in p.items()
                                                 if k != "profile_overrides"}
                                            for nb, p in resolved.per_notebook.items()
                                            if set(p) - {"profile_overrides"}})
    t_run = time.perf_counter()
    try:
        for name in names:
            cohort_dir = out / name
            if not manifest:
                from cxrlib.synthetic import cohort_spec, default_cohort

                preset, knob = cohort_spec(name)
                log(f"[{name}] synthetic cohort ({preset} preset, shortcut {knob:g}, {prof.name} profile)")
                default_cohort(preset, prof, seed=seed, shortcut=knob, progress=False)
            for nb in notebooks:
                applies_to = notebook_cohorts(nb)
                if applies_to is not None and not manifest and name not in applies_to:
                    record.results.append(NotebookResult(nb.name, name, "skipped"))
                    log(f"[{name}] {nb.stem}: not for this cohort, skipped")
                    continue
                log(f"[{name}] {nb.stem}: running")
                params = {"profile": prof.name, "cohort": name, "manifest": manifest or "",
                          "run_dir": str(cohort_dir), "seed": seed, "interactive": False,
                          **resolved.per_notebook.get(nb.name, {})}
                try:
                    res = execute_notebook(nb, cohort_dir, params, name, kernel_name, html)
                except NotebookFailed as exc:
                    record.results.append(NotebookResult(
                        nb.name, name, "failed", ipynb=nb.name,
                        html=nb.stem + ".html" if html else None, error=str(exc).splitlines()[0]))
                    record.status = "failed"
                    log(f"[{name}] {nb.stem}: FAILED")
                    raise
                record.results.append(res)
                log(f"[{name}] {nb.stem}: ok in {res.seconds:.0f} s")
        record.status = "ok"
    finally:
        record.finished = dt.datetime.now().isoformat(timespec="seconds")
        record.seconds = round(time.perf_counter() - t_run, 1)
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


def write_index(record: RunRecord, out: Path) -> Path:
    """Write ``run.json`` and ``index.html`` of a run folder."""
    from dataclasses import asdict

    (out / "run.json").write_text(json.dumps(asdict(record), indent=2))
    esc = html.escape
    prof = get_profile(record.profile, record.profile_overrides)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>cxr-study: {esc(record.profile)} run</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
        "color:#222;line-height:1.45}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:.3em .7em;text-align:left}th{background:#f3f3f3}"
        ".ok{color:#1a7f37}.failed{color:#c0392b;font-weight:bold}.skipped{color:#888}"
        "code{background:#f6f6f6;padding:0 .2em}</style></head><body>",
        "<h1>cxr-study: reproduced tables and figures</h1>",
        f"<p>Profile <b>{esc(record.profile)}</b>, seed {record.seed}, "
        f"{'manifest <code>' + esc(record.manifest) + '</code>' if record.manifest else 'synthetic cohorts'}"
        f"; started {esc(record.started)}, {record.seconds or 0:.0f} s in all; status "
        f"<span class='{esc(record.status)}'>{esc(record.status)}</span>.</p>",
        "<h2>Reports</h2><table><tr><th>cohort</th><th>notebook</th><th>status</th>"
        "<th>seconds</th><th>report</th><th>notebook with code</th></tr>",
    ]
    for r in record.results:
        link = (f"<a href='{esc(r.cohort)}/{esc(r.html)}'>{esc(r.html)}</a>" if r.html else "")
        nb = (f"<a href='{esc(r.cohort)}/{esc(r.ipynb)}'>{esc(r.ipynb)}</a>" if r.ipynb else "")
        err = f"<br><small>{esc(r.error)}</small>" if r.error else ""
        parts.append(
            f"<tr><td>{esc(r.cohort)}</td><td>{esc(r.notebook)}</td>"
            f"<td class='{esc(r.status)}'>{esc(r.status)}{err}</td><td>{r.seconds:.0f}</td>"
            f"<td>{link}</td><td>{nb}</td></tr>"
        )
    parts.append("</table>")
    for name in record.cohorts:
        cdir = out / name
        tables = _rel_files(cdir / "tables", "*.csv")
        figures = _rel_files(cdir / "figures", "*.png")
        if not tables and not figures:
            continue
        parts.append(f"<h2>Cohort <code>{esc(name)}</code></h2>")
        if (cdir / "tables" / "flow.csv").is_file():
            parts.append(_flow_html(cdir / "tables" / "flow.csv", name))
        if tables:
            parts.append("<p>Tables: " + ", ".join(
                f"<a href='{esc(name)}/tables/{esc(t.name)}'>{esc(t.stem)}</a>" for t in tables) + "</p>")
        if figures:
            parts.append("<p>Figures: " + ", ".join(
                f"<a href='{esc(name)}/figures/{esc(f.name)}'>{esc(f.stem)}</a>" for f in figures) + "</p>")
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
        + "</table></body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
