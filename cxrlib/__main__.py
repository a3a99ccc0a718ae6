"""Command line: ``python -m cxrlib run|compare|synth|import|corpus ...`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args) -> int:
    from cxrlib.parameters import parse_assignment, read_params_file
    from cxrlib.runner import NotebookFailed, run_study

    only = args.only.split(",") if args.only else None
    cohorts = args.cohorts.split(",") if args.cohorts else None
    try:
        params = read_params_file(args.params) if args.params else {}
        params.update(parse_assignment(a) for a in args.param)
        record = run_study(profile=args.profile, manifest=args.manifest, out_dir=args.out,
                           only=only, seed=args.seed, cohorts=cohorts, kernel_name=args.kernel,
                           parameters=params, fresh=args.fresh, executor=args.executor,
                           workers=args.workers, threads=args.threads,
                           slurm_config=args.slurm_config, no_wait=args.no_wait)
    except NotebookFailed as exc:
        print(f"\nSTUDY FAILED: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if record.status == "submitted":
        print(f"\nSLURM jobs submitted (--no-wait); run the same command again to reattach to "
              f"them and merge their results. Report index: {Path(record.out_dir) / 'index.html'}")
        return 0
    print(f"\nStudy finished in {record.seconds:.0f} s. Report index: "
          f"{Path(record.out_dir) / 'index.html'}")
    return 0


def _compare(args) -> int:
    from cxrlib.report.compare import compare_runs, format_comparison

    try:
        result = compare_runs(args.run_a, args.run_b)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result, args.run_a, args.run_b))
    return 0


def _synth(args) -> int:
    from cxrlib.data.synthetic import generate_cohort

    df = generate_cohort(args.out, preset=args.preset, n_images=args.n, size=args.size,
                         seed=args.seed, shortcut=args.shortcut, n_jobs=args.jobs, progress=True,
                         dicom_share=args.dicom_share)
    print(f"{len(df)} images written; manifest: {Path(args.out) / 'manifest.csv'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxrlib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the notebooks with papermill and render HTML")
    from cxrlib.profiles import PROFILES

    run.add_argument("--profile", default="default", choices=sorted(PROFILES))
    run.add_argument("--manifest",
                     help="manifest CSV of a real corpus (default: synthetic cohorts)")
    run.add_argument("--out", help="run folder (default reports/<profile>-<date>); a folder that "
                     "holds a run with other settings, or another manifest for a cohort of this "
                     "run, is refused (see --fresh)")
    run.add_argument("--fresh", action="store_true",
                     help="start the run folder afresh: its earlier content is moved, not "
                          "deleted, to <out>.replaced-<date-time> beside it")
    run.add_argument("--executor", choices=["auto", "inline", "local", "slurm"],
                     help="where the notebooks train their folds: inline (one after the other "
                          "in the notebook's kernel), local (a pool of worker processes, one GPU "
                          "each), slurm (SLURM job arrays through submitit, see --slurm-config) "
                          "or auto (local with two GPUs or more, else inline; the default "
                          "unless CXR_EXECUTOR says otherwise). Recorded in run.json; every "
                          "executor gives the same tables")
    run.add_argument("--slurm-config", type=Path, metavar="FILE.yaml",
                     help="settings of the slurm executor: partition, time_min, gpus_per_task, "
                          "cpus_per_task, mem_gb, array_parallelism, retries, poll_s, sbatch "
                          "(extra sbatch options), setup (shell lines)")
    run.add_argument("--no-wait", action="store_true",
                     help="with --executor slurm: submit the jobs and exit; the same command "
                          "run again reattaches to them and merges")
    run.add_argument("--workers", type=int, metavar="N",
                     help="worker processes of the local executor (default: one per GPU)")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch threads per local worker (default: cores / workers)")
    run.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03")
    run.add_argument("--cohorts", help="synthetic cohorts to run, in this order, e.g. arias "
                     "(default: arias-noshortcut,arias,covidgr)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--kernel", default="cxr-study",
                     help="Jupyter kernel name (default cxr-study)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="a notebook parameter (value parsed as YAML), passed to every notebook "
                          "that declares it; profile.FIELD=VALUE overrides a profile field; "
                          "repeatable")
    run.add_argument("--params", type=Path, metavar="FILE.yaml",
                     help="parameters as a YAML mapping (NAME: VALUE; profile fields under "
                          "'profile:'); -p options given too take precedence")
    run.set_defaults(func=_run)

    compare = sub.add_parser("compare", help="explain the differences between two run folders: "
                             "provenance (settings, parameters, profile fields, commit, "
                             "packages) and tables, with the largest numeric difference")
    compare.add_argument("run_a", help="a run folder (with run.json)")
    compare.add_argument("run_b", help="another run folder")
    compare.set_defaults(func=_compare)

    synth = sub.add_parser("synth", help="generate a synthetic cohort")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--preset", default="arias", choices=["arias", "covidgr"])
    synth.add_argument("--n", type=int, default=200, help="number of images")
    synth.add_argument("--size", type=int, default=256, help="long side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--shortcut", type=float, default=1.0, help="0: style independent of label")
    synth.add_argument("--jobs", type=int, default=1, help="worker processes")
    synth.add_argument("--dicom-share", type=float, default=0.0,
                       help="fraction of images written as DICOM with fake identifying tags "
                            "(the study's cohorts use 0.15)")
    synth.set_defaults(func=_synth)

    from cxrlib.data.importers.cli import add_corpus_parser, add_import_parser

    add_import_parser(sub)
    add_corpus_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
