"""The `kdwb` command: list, train, distill, runs, demo, app.

Errors a user can fix (a bad value, a missing data set) print one line and exit with status 2;
no traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from . import build as builders
from .engine.config import RunConfig


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, Any]:
    """``["width=8", "depth=3"]`` -> ``{"width": 8, "depth": 3}`` (values parsed as YAML scalars)."""
    import yaml
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r} is not valid; write it as NAME=VALUE")
        try:
            out[key] = yaml.safe_load(value)  # safe: a !!python/... tag is refused
        except yaml.YAMLError as error:
            raise ValueError(f"{flag} {pair!r} is not valid: {' '.join(str(error).split())}") from None
    return out


def _method_args(names: Sequence[str], pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``--method kd --method-arg kd.temperature=4`` -> ``{"kd": {"temperature": 4}}``."""
    methods: dict[str, dict[str, Any]] = {name: {} for name in names or ()}
    for key, value in _key_values(pairs, "--method-arg").items():
        name, sep, param = key.partition(".")
        if not sep:
            raise ValueError(f"--method-arg {key!r} is not valid; write METHOD.PARAM=VALUE, e.g. kd.temperature=4")
        if name not in methods:
            raise ValueError(f"--method-arg names method {name!r}, which is not among --method "
                             f"{', '.join(methods) or '(none)'}")
        methods[name][param] = value
    return methods


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
               "seed": args.seed, "device": args.device, "grad_clip": args.grad_clip}
    return {k: v for k, v in options.items() if v is not None}


def _config_from_args(args: argparse.Namespace, kind: str) -> RunConfig:
    if args.config:
        config = RunConfig.load(args.config)
        overrides = _run_options(args)
        return RunConfig.from_dict({**config.to_dict(), **overrides})
    dataset_args = _key_values(args.data_arg, "--data-arg")
    if args.n_train is not None:
        dataset_args["n_train"] = args.n_train
    if args.download:
        dataset_args["download"] = True
    fields: dict[str, Any] = {"kind": kind, "dataset": args.dataset, "dataset_args": dataset_args}
    if kind == "train":
        fields["student"] = {"name": args.model, **_key_values(args.model_arg, "--model-arg")}
    else:
        fields["student"] = {"name": args.student, **_key_values(args.student_arg, "--student-arg")}
        fields["teacher"] = {"name": args.teacher, **_key_values(args.teacher_arg, "--teacher-arg")}
        fields["methods"] = _method_args(args.method, args.method_arg)
        fields["scheme"] = args.scheme
        fields["scheme_args"] = _key_values(args.scheme_arg, "--scheme-arg")
        if args.task_weight is not None:
            fields["task_weight"] = args.task_weight
    return RunConfig.from_dict({**fields, **_run_options(args)})


def _print_result(run) -> None:
    reused = " (reused from the store)" if run.status == "reused" else ""
    print(f"{run.label}: {run.status}{reused}; run id {run.run_id}")
    for key, value in run.result.items():
        print(f"  {key:12s} {value:.4f}")


def cmd_list(args: argparse.Namespace) -> None:
    from .registry import DATASETS, METHODS, MODELS
    from .schemes import SCHEMES  # importing the package registers every scheme
    kinds = {"methods": METHODS, "schemes": SCHEMES, "models": MODELS, "datasets": DATASETS}
    for kind in ([args.what] if args.what else list(kinds)):
        print(f"{kind}:")
        for entry in kinds[kind]:
            meta = entry.meta
            detail = meta.get("category") or meta.get("family") or meta.get("kind") or ""
            extra = meta.get("paper") or meta.get("description") or ""
            print(f"  {entry.name:16s} {detail:14s} {extra}")


def cmd_train(args: argparse.Namespace) -> None:
    config = _config_from_args(args, "train")
    run = builders.run_from_config(config, teacher_epochs=None, progress=not args.quiet,
                                   reuse=not args.no_reuse)
    _print_result(run.fit())


def cmd_distill(args: argparse.Namespace) -> None:
    config = _config_from_args(args, "distill")
    run = builders.run_from_config(config, teacher_epochs=args.teacher_epochs,
                                   progress=not args.quiet, reuse=not args.no_reuse)
    _print_result(run.fit())


def cmd_runs(args: argparse.Namespace) -> None:
    from .store import RunStore
    store = RunStore()
    if args.action == "list":
        table = store.runs()
        if table.empty:
            print(f"no runs yet in {store.path}")
            return
        columns = ["id", "label", "dataset", "methods", "status", "seed", "duration_s"]
        print(table[columns].to_string(index=False))
    elif args.action == "show":
        for run_id in args.ids or []:
            print(json.dumps(store.get(run_id), indent=2, default=str))
    else:  # compare
        board = store.leaderboard()
        if args.ids:
            board = board[board["id"].isin(args.ids)]
        print(board.to_string(index=False) if not board.empty else "no finished runs to compare")


def cmd_methods_table(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .methods_table import methods_table
    text = methods_table()
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo
    run_demo(seed=args.seed, quiet=args.quiet)


def cmd_app(args: argparse.Namespace) -> None:
    from .app import plan, serve
    app = plan(args.notebook, host=args.host, port=args.port, token=args.token)
    status = serve(app, open_browser=not args.no_browser)
    if status:
        raise SystemExit(status)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a run config (.yaml/.yml/.json); flags below override it")
    parser.add_argument("--dataset", default="digits", help="registered data set (kdwb list datasets)")
    parser.add_argument("--data-arg", action="append", metavar="NAME=VALUE", help="loader argument")
    parser.add_argument("--n-train", type=int, help="use a stratified subset of this many training images")
    parser.add_argument("--download", action="store_true", help="download a torchvision data set if missing")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--grad-clip", type=float, help="clip the gradients' total norm to this")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--no-reuse", action="store_true", help="train again even if the store has this run")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="kdwb", description="KD Workbench: knowledge distillation, live.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered methods, schemes, models and data sets")
    p.add_argument("what", nargs="?", choices=["methods", "schemes", "models", "datasets"])
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train a model (a teacher) on labels alone")
    p.add_argument("--model", default="cnn")
    p.add_argument("--model-arg", action="append", metavar="NAME=VALUE")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="distil a teacher into a student")
    p.add_argument("--teacher", default="cnn")
    p.add_argument("--teacher-arg", action="append", metavar="NAME=VALUE")
    p.add_argument("--teacher-epochs", type=int, default=None,
                   help="epochs to train the teacher (reused from the store when it exists)")
    p.add_argument("--student", default="cnn")
    p.add_argument("--student-arg", action="append", metavar="NAME=VALUE")
    p.add_argument("--method", action="append", help="KD method (repeatable; none = plain CE)")
    p.add_argument("--method-arg", action="append", metavar="METHOD.PARAM=VALUE")
    p.add_argument("--task-weight", type=float, help="weight of the hard-label cross-entropy")
    p.add_argument("--scheme", default="offline",
                   help="who teaches whom: " + ", ".join(
                       f"{name} (default)" if name == "offline" else name for name in _scheme_names()))
    p.add_argument("--scheme-arg", action="append", metavar="NAME=VALUE", help="scheme argument, e.g. peers=3")
    _common(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("runs", help="runs in the store")
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "compare"])
    p.add_argument("ids", nargs="*")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("methods-table", help="write the methods table (docs/methods.md) from the registry")
    p.add_argument("--output", default="docs/methods.md", help="file to write, or - for standard output")
    p.set_defaults(func=cmd_methods_table)

    p = sub.add_parser("demo", help="teacher, student from scratch and student with KD, on digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("app", help="serve a notebook (default: the quickstart) as a web app with Voila")
    p.add_argument("notebook", nargs="?", help="the notebook to serve (default: notebooks/00_quickstart.ipynb)")
    p.add_argument("--port", type=int, default=8866)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1); any other needs a token")
    p.add_argument("--token", help="access token (generated when --host is not a loopback address)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=cmd_app)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("kdwb: interrupted; the run is marked interrupted and resumes from its last "
              "checkpoint when started again", file=sys.stderr)
        return 130
    # FloatingPointError: a loss that became NaN; OSError: an unreadable config, a full disk
    except (ValueError, TypeError, KeyError, OSError, RuntimeError, FloatingPointError) as error:
        if os.environ.get("KDWB_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"kdwb: error: {message}", file=sys.stderr)
        return 2
    return 0


def _scheme_names() -> list[str]:
    from .schemes import SCHEMES  # importing the package registers every scheme
    return SCHEMES.names()


if __name__ == "__main__":
    sys.exit(main())
