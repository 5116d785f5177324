"""Command line for data-set jobs, without the browser.

    python -m analysis.dataset audit --model digits --dataset digits --kind predict
    python -m analysis.dataset audit --model '{"kind": "random", "arch": "resnet18"}' \\
        --dataset /data/manifest.parquet --engine ray --kind saliency --params '{"method": "gradcam"}'
    python -m analysis.dataset list

``audit`` runs one job (the same job, the same output folder as the dashboard's), prints
progress to stderr and a JSON summary to stdout, and records the run in the audit trail
(page "dataset") unless ``--no-record``. Under ``ray job submit`` Ray sets ``RAY_ADDRESS``
and ``--engine ray`` connects to that cluster. Exit status: 0 complete, 1 error, 2 bad
arguments, 3 stopped (Ctrl-C: the chunks written so far are kept; run again to resume).
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys
import time

from analysis.core.errors import ConvlensError


def _json_arg(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {what} is not valid JSON: {e}") from None


def _model(text: str):
    return _json_arg(text, "--model") if text.strip().startswith("{") else text


def _indices(text: str | None):
    if not text:
        return None
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def _parser() -> argparse.ArgumentParser:
    from analysis.dataset.executor import KINDS
    p = argparse.ArgumentParser(prog="python -m analysis.dataset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("audit", help="run one data-set job and record it")
    a.add_argument("--model", required=True, help="digits | default | <torchvision arch> | random:<arch> | "
                                                  "a ModelSpec as JSON")
    a.add_argument("--dataset", required=True, help="digits | manifest.csv/.parquet | folder | file.zip | "
                                                    "a DatasetRef as JSON")
    a.add_argument("--kind", choices=KINDS, default="predict")
    a.add_argument("--params", default="{}", help="job parameters as JSON (see analysis/dataset/workers.py)")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--indices", help="image positions: 0-99,250,300-310 (default: all)")
    a.add_argument("--engine", choices=("local", "ray"), default=None, help="default: the configured engine")
    a.add_argument("--ray-pipeline", choices=("data", "pool"), default=None,
                   help="Ray: data = Ray Data map_batches (CPUs: tasks whose worker processes keep the model "
                        "between jobs; GPUs: an actor pool per job); pool = warm actors kept between jobs "
                        "(default: the configured ray_pipeline, else data)")
    a.add_argument("--ray-data-actors", action="store_true",
                   help="Ray Data: run the chunks on an actor pool of the job on CPUs too (GPUs always do)")
    a.add_argument("--ray-address", default=None, help="Ray cluster (default: ray_address / RAY_ADDRESS, else "
                                                       "an embedded single-node Ray)")
    a.add_argument("--concurrency", type=int, default=None, help="Ray actors")
    a.add_argument("--num-gpus", type=float, default=None, help="GPUs per Ray actor (default: 1 on GPU clusters)")
    a.add_argument("--data-dir", default=None, help="output root (default: the configured data_dir)")
    a.add_argument("--force", action="store_true", help="recompute even if a complete result exists")
    a.add_argument("--no-record", action="store_true", help="do not write the audit trail")
    a.add_argument("--user", default=None, help="user name for the audit trail (default: the login name)")
    a.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub.add_parser("list", help="list the stored job results")
    return p


def _progress(quiet: bool):
    state = {"t": 0.0, "t0": time.monotonic()}

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if quiet or (now - state["t"] < 1.0 and done < total):
            return
        state["t"] = now
        rate = done / max(1e-9, now - state["t0"])
        print(f"\r{done}/{total} images ({rate:.0f}/s)", end="\n" if done >= total else "", file=sys.stderr,
              flush=True)
    return cb


def cmd_audit(args) -> int:
    """The ``audit`` command: run one data-set job, print its summary as JSON on stdout and
    (unless ``--no-record``) record it in the audit trail.

    Args:
        args: the parsed ``argparse.Namespace`` of the ``audit`` sub-command (``model``,
            ``dataset``, ``kind``, ``params``, ``batch_size``, ``indices``, ``engine``, ...).

    Returns:
        The exit status: 0 when the job is complete, 3 when it is incomplete or was stopped
        with Ctrl-C (the chunks written so far are kept for a resume).
    """
    from analysis.dataset.executor import JobSpec, run
    spec = JobSpec(kind=args.kind, model=_model(args.model), dataset=args.dataset,
                   params=_json_arg(args.params, "--params"), batch_size=args.batch_size,
                   indices=_indices(args.indices))
    try:
        result = run(spec, engine=args.engine, progress=_progress(args.quiet), data_dir=args.data_dir, force=args.force, ray_address=args.ray_address,
                     concurrency=args.concurrency, num_gpus=args.num_gpus, ray_pipeline=args.ray_pipeline,
                     ray_data_actors=True if args.ray_data_actors else None,
                     on_info=lambda s: print(s, file=sys.stderr))
    except KeyboardInterrupt:
        print("\nstopped: the chunks written so far are kept; run the same command again to resume.",
              file=sys.stderr)
        return 3
    out = {"complete": result.complete, "key": result.key, "path": str(result.path), "kind": spec.kind,
           "rows": result.n_rows, "images": result.n_images, "skipped": len(result.skipped),
           "engine": result.meta.get("engine"), "ray_pipeline": result.meta.get("ray_pipeline"), "seconds": result.meta.get("seconds"),
           "warnings": result.warnings()}
    for i, path, reason in result.skipped[:20]:
        print(f"skipped {path} (index {i}): {reason}", file=sys.stderr)
    if not args.no_record:
        from analysis.dataset.record import record_job
        out["audit_run"] = record_job(result, user=args.user or _login())
    print(json.dumps(out, indent=2))
    return 0 if result.complete else 3


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (containers): record without one
        return ""


def cmd_list(args) -> int:
    """The ``list`` command: print the stored job results (key, complete, rows, model, data
    set) as a JSON list on stdout.

    Args:
        args: the parsed ``argparse.Namespace`` of the ``list`` sub-command (it has no options).

    Returns:
        The exit status 0.
    """
    from analysis.dataset.executor import jobs_dir
    root = jobs_dir()
    rows = []
    for d in sorted(root.glob("*")) if root.is_dir() else []:
        meta = {}
        if (d / "meta.json").is_file():
            meta = json.loads((d / "meta.json").read_text())
        rows.append({"key": d.name, "complete": bool(meta.get("complete")), "rows": meta.get("n_rows"),
                     "model": meta.get("model_name"), "dataset": meta.get("dataset_label")})
    print(json.dumps(rows, indent=2))
    return 0


def main(argv=None) -> int:
    """Command-line entry point of ``python -m analysis.dataset``.

    Args:
        argv: the command-line arguments without the program name (a list of str);
            None (the default) reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 on a ConvlensError (printed as one ``error:`` line
        on stderr, never a traceback), 3 for an incomplete or stopped job.
    """
    args = _parser().parse_args(argv)
    try:
        return cmd_audit(args) if args.command == "audit" else cmd_list(args)
    except ConvlensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
