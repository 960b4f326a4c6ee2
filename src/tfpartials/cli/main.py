"""Entry point: argument parsing, exit codes (0 ok, 1 a check failed, 2 bad input) and quiet TF start-up.

TensorFlow is imported lazily, so ``tfpartials --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

# order shown in --help; a command whose module is absent is simply not offered
COMMANDS = ["gradients", "hessian", "hvp", "spectrum", "jacobian", "attribute", "check", "report", "demo"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        sys.stderr.write(f"tfpartials: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tfpartials")
    except Exception:  # pragma: no cover
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tfpartials",
                     description="Every partial derivative of a trained TensorFlow/Keras network.",
                     epilog="Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.")
    parser.add_argument("--version", action="version", version=f"tfpartials {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        modname = f"tfpartials.cli.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    from .common import quiet_tensorflow_import

    try:
        quiet_tensorflow_import()
        if getattr(args, "quiet", False):
            from .._progress import set_quiet

            set_quiet(True)
        code = args._run(args)
        return int(code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("tfpartials: interrupted; no output written\n")
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
        if debug:
            raise
        sys.stderr.write(f"tfpartials: error: {_describe(exc)}\n")
        return EXIT_USAGE if _is_user_error(exc) else 3


def _is_user_error(exc: BaseException) -> bool:
    from .._checks import InputError

    if isinstance(exc, InputError | TypeError | ValueError | OSError | MemoryError):
        return True
    name = type(exc).__name__
    return name in {"InvalidArgumentError", "ResourceExhaustedError", "NotFoundError"}


def _describe(exc: BaseException) -> str:
    from .._checks import InputError

    msg = " ".join(str(exc).split())
    if isinstance(exc, InputError):
        return msg
    if isinstance(exc, MemoryError):
        return "out of memory; use --max-memory, a smaller --batch-size, or fewer parameters (--wrt)"
    if type(exc).__name__ == "ResourceExhaustedError":
        return "out of memory in TensorFlow; use a smaller --batch-size, --max-memory or fewer parameters (--wrt)"
    if len(msg) > 300:
        msg = msg[:297] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
