"""Command-line entries ``import`` and ``corpus``, registered by ``cxrlib/__main__.py``::

    python -m cxrlib import SOURCE ROOT -o data_manifests/NAME.csv [--mapping FILE]
    python -m cxrlib corpus --config data_manifests/arias2020_corpus.yaml [-o OUT.csv]

``import`` writes the manifest (data root = ROOT), its sidecar, the QC report ``NAME.qc.csv``
and, for COVIDGR's shipped folds, ``NAME.split_plan.csv``; it ends with the accounting line
``accounting: N candidates = K in the manifest + D left out (QC report)``. ``corpus`` merges
manifests as the config says, runs QC and prints the images per class and source.

Each parser's ``func`` takes the parsed arguments and returns an exit code (0 success, 2 bad
input, with the reason on stderr).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cxrlib.data.corpus import compose_corpus, load_corpus_config, write_corpus
from cxrlib.data.dicom import DicomError
from cxrlib.data.importers import IMPORTERS, MAPPING_IMPORTERS, ImportOptions, run_importer
from cxrlib.data.importers.common import accounting_line, write_import_result
from cxrlib.data.manifest import ManifestError

_INPUT_ERRORS = (FileNotFoundError, ManifestError, DicomError, ValueError)


def _summarise_report(report, out) -> None:
    dropped = report[report["action"] == "dropped"]
    flagged = report[report["action"] == "flagged"]
    print(f"QC report: {len(dropped)} row(s) left out, {len(flagged)} flagged", file=out)
    if len(report):
        reasons = report["action"] + ": " + report["reason"].str.split(":").str[0].str[:80]
        for reason, n in reasons.value_counts().head(12).items():
            print(f"  {n:>7}  {reason}", file=out)


def add_import_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``import`` sub-command to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "import", help="import one dataset into a manifest",
        description="Read one dataset as distributed and write a manifest CSV (data root = "
                    "ROOT), its .meta.json sidecar and a QC report NAME.qc.csv.")
    parser.add_argument("source", choices=sorted(IMPORTERS), help="dataset (importer) key")
    parser.add_argument("root", type=Path, help="folder holding the dataset as distributed")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="manifest CSV to write, e.g. data_manifests/nih.csv")
    parser.add_argument("--mapping", type=Path,
                        help="YAML/JSON mapping file (required for 'csv', optional for "
                             "'folders')")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for derived PNGs and masks (default ROOT/cxrlib_cache)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help="pseudonymisation key file (default $CXR_PSEUDONYM_KEY_FILE or "
                             "~/.config/cxr-study/pseudonym.key, created on first use)")
    parser.add_argument("--no-hash", action="store_true",
                        help="skip image hashing and duplicate grouping at import")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_import_command)
    return parser


def run_import_command(args: argparse.Namespace) -> int:
    """Run ``import`` from parsed arguments; returns the exit code."""
    kwargs = {}
    if args.mapping is not None:
        if args.source not in MAPPING_IMPORTERS:
            print(f"error: --mapping is only for {list(MAPPING_IMPORTERS)}", file=sys.stderr)
            return 2
        kwargs["mapping"] = args.mapping
    elif args.source == "csv":
        print("error: the csv importer needs --mapping FILE", file=sys.stderr)
        return 2
    options = ImportOptions(key=args.key_file, cache_dir=args.cache,
                            hash_images=not args.no_hash, progress=not args.quiet,
                            n_jobs=args.jobs)
    try:
        result = run_importer(args.source, args.root, options, **kwargs)
        written = write_import_result(result, args.output)
    except _INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = result.manifest["label"].value_counts().reindex(
        ["control", "pneumonia", "covid19"], fill_value=0)
    print(f"{result.source}: {len(result.manifest)} image(s) "
          f"({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {written['manifest']}")
    _summarise_report(result.report, sys.stdout)
    for name in ("report", "split_plan"):
        if name in written:
            print(f"{name.replace('_', ' ')}: {written[name]}")
    print(accounting_line(result))  # raises if the counts do not add up: a bug, not bad input
    return 0


def add_corpus_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``corpus`` sub-command to an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "corpus", help="merge manifests into a study corpus",
        description="Merge per-source manifests with the class rules of a corpus config, run "
                    "QC (frontal views, duplicates, patient groups) and print the counts.")
    parser.add_argument("--config", type=Path, required=True, help="corpus YAML file")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="corpus CSV (default: <config folder>/<name>.csv)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip manifests of the config that do not exist")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes for hashing")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_corpus_command)
    return parser


def run_corpus_command(args: argparse.Namespace) -> int:
    """Run ``corpus`` from parsed arguments; returns the exit code."""
    try:
        config = load_corpus_config(args.config)
        result = compose_corpus(config, allow_missing=args.allow_missing,
                                progress=not args.quiet, n_jobs=args.jobs)
        output = args.output or config.config_path.parent / f"{config.name}.csv"
        written = write_corpus(result, output)
    except _INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in result.meta["missing_sources"]:
        print(f"warning: skipped missing manifest {path}", file=sys.stderr)
    print(f"corpus {config.name}: {len(result.manifest)} image(s) -> {written['manifest']}")
    print(result.counts.to_string() if len(result.counts) else "(empty)")
    _summarise_report(result.report, sys.stdout)
    print(f"report: {written['report']}")
    return 0
