"""The ``circuits`` command: tasks, prompt sets, model info, the zoo and circuit exports. Run ``circuits --help``.

Analyses are not commands of the library: each runs as a module of its own
(``python -m analyses.ioi``, ``python -m analyses.discover``; see the Makefile).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable


def _options(text: str | None) -> dict:
    """``--options`` as a dict (a JSON object), or a clear error."""
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--options is not valid JSON ({e.msg} at character {e.pos}): {text!r}; "
                         "expected an object such as '{\"corruption\": \"s2_io\"}'") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object of task options, got {text!r}")
    return options


def _cmd_tasks(args: argparse.Namespace) -> int:
    from circuits.tasks import TASKS

    for name, task in sorted(TASKS.items()):
        print(f"{name:16s} {task.description}")
        print(f"{'':16s} options: {task.defaults}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    from circuits.engines.common import check_fits
    from circuits.io import checked_folder
    from circuits.models import load_model
    from circuits.tasks import build_task, get_task
    from circuits.tasks.templates import check_n, check_seed

    options = _options(args.options)  # bad input fails before the model loads
    get_task(args.task).options(**options)
    check_n(args.n)
    check_seed(args.seed)
    if args.out:
        checked_folder(args.out)
    model = load_model(args.model, device=args.device)
    ps = build_task(args.task, model.tokenizer, n=args.n, seed=args.seed, **options)
    check_fits(model, ps, f"the {args.task} prompts for {args.model}")
    print(json.dumps(ps.describe(), indent=2))
    if args.out:
        ps.save(args.out)
        print(f"wrote {args.out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from circuits.models import load_model, model_info

    print(json.dumps(model_info(load_model(args.model, device=args.device)), indent=2))
    return 0


def _cmd_zoo(args: argparse.Namespace) -> int:
    from circuits.zoo import list_zoo

    if args.action == "list":
        names = list_zoo()
        print("\n".join(f"zoo:{n}" for n in names) if names else "no zoo models are bundled yet (run `make zoo`)")
        return 0
    from circuits.zoo import cli as zoo_cli  # recipes: heavy imports only here

    return zoo_cli.run(args.action, names=args.names, write_cards=args.write_cards)


def _cmd_export(args: argparse.Namespace) -> int:
    from circuits.graph.export import check_format, export, render_dot
    from circuits.graph.serialize import read_circuit

    fmt = check_format(args.format)  # bad input fails before anything is read or written
    if args.render and (fmt != "dot" or args.render not in ("pdf", "svg", "png")):
        raise ValueError(f"--render {args.render!r}: expected pdf, svg or png, with --format dot")
    circuit = read_circuit(args.circuit, keep=fmt == "mib")  # MIB in, MIB out: every score carries over
    out = export(circuit, args.out, fmt, title=args.title)
    print(f"wrote {out}")
    if args.render:
        with open(out) as f:
            rendered = render_dot(f.read(), f"{out.removesuffix('.dot')}.{args.render}", args.render)
        if rendered:
            print(f"wrote {rendered}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (``circuits <cmd> --help`` shows the usage)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``circuits`` argument parser: subcommands tasks, build, info, zoo and export, handler in ``fn``."""
    p = _Parser(prog="circuits", description="Find, compare, export and edit circuits.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("tasks", help="list the tasks and their options")
    s.set_defaults(fn=_cmd_tasks)

    s = sub.add_parser("build", help="build a task's PromptSet for a model's tokenizer")
    s.add_argument("task")
    s.add_argument("--model", default="zoo:toyworld")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--options", help="task options as JSON, e.g. '{\"corruption\": \"s2_io\"}'")
    s.add_argument("--out", help="write the PromptSet as JSON here")
    s.add_argument("--device")
    s.set_defaults(fn=_cmd_build)

    s = sub.add_parser("info", help="load a model and print its shape and numerics")
    s.add_argument("model")
    s.add_argument("--device")
    s.set_defaults(fn=_cmd_info)

    s = sub.add_parser("zoo", help="the bundled model organisms: list, check, train")
    s.add_argument("action", choices=["list", "check", "train"])
    s.add_argument("names", nargs="*", help="zoo model names (default: all)")
    s.add_argument("--write-cards", action="store_true",
                   help="with check: rewrite the model cards and zoo-check.json from the measured numbers")
    s.set_defaults(fn=_cmd_zoo)

    s = sub.add_parser("export", help="export a circuit as dot, tikz, pdf, svg, png, graphml, mib or json")
    s.add_argument("circuit", help="a Circuit JSON, a result file holding one under \"circuit\" (ioi.json), "
                                   "or a MIB / EAP-IG graph JSON")
    s.add_argument("--format", required=True, help="json, mib, graphml, dot, tikz, pdf, svg or png")
    s.add_argument("--out", required=True, help="the file to write")
    s.add_argument("--title", help="the drawing's title (default: the circuit's task and model; '' for none)")
    s.add_argument("--render", help="with --format dot: also render it with Graphviz as pdf, svg or png")
    s.set_defaults(fn=_cmd_export)
    return p


# errors a user's input causes; their message is the whole story
USER_ERRORS = (KeyError, ValueError, TypeError, OSError, RuntimeError, ArithmeticError)
REFUSED = 4  # the exit code of an analysis that found the model does not do its task (a finding, not a crash)


class ModelFailsTask(ValueError):
    """The model does not solve a task well enough to analyse how it solves it (exit code ``REFUSED``)."""


def one_line_errors(fn: Callable[[], int]) -> int:
    """Run ``fn``; an error prints one line on stderr and gives a non-zero exit code (2: bad input or a
    failed run, 3: an internal error, 4: the model does not do the task (:class:`ModelFailsTask`), 130:
    interrupted). CIRCUITS_DEBUG=1 re-raises (tracebacks)."""
    import os

    debug = bool(os.environ.get("CIRCUITS_DEBUG"))
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("circuits: interrupted", file=sys.stderr)
        return 130
    except ModelFailsTask as e:
        if debug:
            raise
        print(f"circuits: refused: {' '.join(str(e).split())}", file=sys.stderr)
        return REFUSED
    except USER_ERRORS as e:
        if debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"circuits: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    except Exception as e:  # the top level: one line instead of a traceback, never swallowed (exit 3)
        if debug:
            raise
        print(f"circuits: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
              "(CIRCUITS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 3


def main(argv: list[str] | None = None) -> int:
    """Run one ``circuits`` command (see :func:`one_line_errors` for what errors look like)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    return one_line_errors(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
