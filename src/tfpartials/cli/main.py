"""Entry point: argument parsing, exit codes (0 ok, 1 a check failed, 2 bad input) and quiet TF start-up.

TensorFlow is imported lazily, so ``tfpartials --help`` answers at once. Resource guards live here too:
``--timeout`` (SIGALRM -> "timed out after N s; nothing written", exit 2), Ctrl-C (exit 130, nothing written:
outputs are renamed into place only when complete) and ``--sandbox`` (the command re-run in a confined child,
see :mod:`tfpartials.cli.sandbox`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE = 0, 1, 2

# order shown in --help
COMMANDS = ["gradients", "hessian", "hvp", "spectrum", "kfac", "jacobian", "sensitivity", "attribute", "influence", "laplace", "check", "report", "demo"]


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
        mod = importlib.import_module(f"tfpartials.cli.commands.{name}")
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


class CommandTimeout(BaseException):
    """Raised by the ``--timeout`` alarm; a BaseException so that no ``except Exception`` swallows it."""


# seconds to wait, after the alarm, for a long C call to return before exiting hard
TIMEOUT_GRACE = 30.0


@contextmanager
def time_limit(seconds: float | None):
    """Raise :class:`CommandTimeout` after ``seconds`` (SIGALRM); restores any timer that was running before."""
    if seconds is None:
        yield
        return
    from .._checks import InputError, check_positive_float

    seconds = check_positive_float("--timeout", seconds)
    if threading.current_thread() is not threading.main_thread():
        raise InputError("--timeout works only in the main thread")

    def on_alarm(signum, frame):
        raise CommandTimeout(seconds)

    def hard_exit():  # the alarm could not interrupt a long native call
        sys.stderr.write(f"tfpartials: error: timed out after {seconds:g} s; stopped hard\n")
        sys.stderr.flush()
        os._exit(EXIT_USAGE)

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog = threading.Timer(seconds + TIMEOUT_GRACE, hard_exit)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        watchdog.cancel()
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # e.g. a test runner's own timeout: give it back what is left
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3), old_interval)


def console() -> None:
    """The ``tfpartials`` command (and ``python -m tfpartials``): :func:`main`, then a quick exit.

    Once TensorFlow is loaded, the interpreter's teardown (TensorFlow's destructors and thread pools) takes 2-3 s
    after the work is done; by then every output has been written, closed and renamed into place, so a command
    that finished (exit 0 or 1) flushes its streams and leaves without it. An interrupted or failed command, or
    an error raised out of :func:`main`, exits the usual way.
    """
    code = main()
    if code in (EXIT_OK, EXIT_CHECK_FAILED) and "tensorflow" in sys.modules:  # finished, not interrupted
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: nothing more to say
                pass
        os._exit(code)
    sys.exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the process-wide warning display and debug flag are restored afterwards."""
    import warnings

    started = time.perf_counter()  # a time budget (report --time-budget) counts from here: TF's start-up included
    saved_show, saved_debug = warnings.showwarning, os.environ.get("TFPARTIALS_DEBUG")
    native = _NativeStderrFilter() if "--debug" not in (argv if argv is not None else sys.argv[1:]) else None
    try:
        if native is not None:
            native.start()
        return _main(argv, started)
    finally:
        if native is not None:
            native.stop()
        warnings.showwarning = saved_show
        if saved_debug is None:
            os.environ.pop("TFPARTIALS_DEBUG", None)
        else:
            os.environ["TFPARTIALS_DEBUG"] = saved_debug


def _main(argv: list[str] | None, started: float | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = time.perf_counter() if started is None else started
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    if debug:
        os.environ["TFPARTIALS_DEBUG"] = "1"  # TensorFlow's own logs are passed through, not captured
    else:
        _one_line_warnings()
    from .common import quiet_tensorflow_import

    try:
        with time_limit(getattr(args, "timeout", None)):
            if getattr(args, "sandbox", False):
                from .sandbox import run_cli_sandboxed

                return run_cli_sandboxed(argv, args)
            quiet_tensorflow_import(getattr(args, "devices", None))
            if getattr(args, "quiet", False):
                from .._progress import set_quiet

                set_quiet(True)
            code = args._run(args)
            return int(code or 0)
    except KeyboardInterrupt:
        sys.stderr.write("tfpartials: interrupted; no output written\n")
        return 130
    except CommandTimeout as exc:
        if debug:
            raise
        sys.stderr.write(f"tfpartials: error: timed out after {exc.args[0]:g} s; nothing written\n")
        return EXIT_USAGE
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line unless --debug
        if debug:
            raise
        sys.stderr.write(f"tfpartials: error: {_describe(exc)}\n")
        return EXIT_USAGE if _is_user_error(exc) else 3


# TensorFlow's native start-up notices: absl's banner and INFO lines ("I0000 ... port.cc:153] oneDNN custom
# operations are on ..."), which it prints whenever a new runtime component starts, whatever the log level
_NATIVE_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|I\d{4} \d\d:\d\d:"
                           r"|To enable the following instructions: .*rebuild TensorFlow with)")


class _NativeStderrFilter:
    """Route file descriptor 2 through a pipe that drops TensorFlow's native INFO notices (nothing else).

    Python's own writes to ``sys.stderr`` go through the same pipe, so their order is kept. Only active when
    ``sys.stderr`` is the process's real stderr (not a test capture); progress bars still see a terminal.
    """

    def __init__(self):
        self.saved: int | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            if sys.stderr.fileno() != 2:
                return
        except (AttributeError, ValueError, OSError):  # replaced stderr (a test capture): leave it alone
            return
        from .. import _progress

        if _progress._TERMINAL is None:
            _progress._TERMINAL = sys.stderr.isatty()
        sys.stderr.flush()
        self.saved = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self.thread = threading.Thread(target=self._pump, args=(read, self.saved), daemon=True)
        self.thread.start()

    @staticmethod
    def _pump(read: int, out: int) -> None:
        buffer = b""
        with os.fdopen(read, "rb", buffering=0) as src:
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not _NATIVE_NOISE.match(line.decode("utf-8", "replace")):
                        os.write(out, line + b"\n")
                if buffer and not buffer.startswith((b"I", b"W")):  # a partial line (progress bar): pass it on
                    os.write(out, buffer)
                    buffer = b""
        if buffer and not _NATIVE_NOISE.match(buffer.decode("utf-8", "replace")):
            os.write(out, buffer)

    def stop(self) -> None:
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (ValueError, OSError):
            pass
        os.dup2(self.saved, 2)  # closes the pipe's last write end: the pump drains and ends
        if self.thread is not None:
            self.thread.join(timeout=5)
        os.close(self.saved)
        self.saved = None


def _one_line_warnings() -> None:
    """Warnings print as ``tfpartials: warning: ...`` on one line (no file, line number or source line)."""
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        (file or sys.stderr).write(f"tfpartials: warning: {text}\n")

    warnings.showwarning = show


def _is_user_error(exc: BaseException) -> bool:
    from .._checks import InputError

    if isinstance(exc, InputError | TypeError | ValueError | OSError | MemoryError):
        return True
    if _blocked(exc):
        return True
    name = type(exc).__name__
    return name in {"InvalidArgumentError", "ResourceExhaustedError", "NotFoundError", "PermissionDeniedError"}


def _blocked(exc: BaseException) -> str | None:
    """The sandbox's refusal behind ``exc`` (also when TensorFlow wrapped or a library swallowed it), or None."""
    if not os.environ.get("TFPARTIALS_SANDBOXED"):
        return None
    from .._confine import BLOCKED, blocked_events

    msg = _core_message(exc)
    if BLOCKED in msg:
        return msg[msg.index(BLOCKED):][:300]
    if blocked_events:
        return f"{blocked_events[0]} (then: {msg[:160]})"
    if type(exc).__name__ == "PermissionDeniedError" or isinstance(exc, PermissionError):
        return f"{BLOCKED}: the model tried an operation the sandbox forbids ({msg[:200]})"
    return None


def _core_message(exc: BaseException) -> str:
    """One line: for TensorFlow op errors, the message without the Python stack TensorFlow embeds in it."""
    raw = str(exc)
    if "[[{{node" in raw or "Detected at node" in raw:
        lines = raw.splitlines()
        cut = next((i for i, line in enumerate(lines) if line.strip().startswith("[[")), len(lines))
        body = [line.strip() for line in lines[:cut] if line.strip()]
        if body:
            raw = body[-1]
    return " ".join(raw.split())


def _describe(exc: BaseException) -> str:
    from .._checks import InputError

    blocked = _blocked(exc)
    if blocked:
        return blocked
    msg = _core_message(exc)
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
