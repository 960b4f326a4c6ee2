"""Run a tfpartials computation on an untrusted model in a confined child process.

``tfpartials COMMAND MODEL ... --sandbox`` (and :func:`sandboxed` from Python) runs the same command in a child
``python -m tfpartials.cli.sandbox`` that confines itself *before* TensorFlow or the model are loaded:

- **files** (Landlock, Linux >= 5.13): it may read only the Python installation, system libraries, a few
  ``/proc`` and ``/sys`` entries and the paths named on the command line; it may write only inside a fresh
  private work directory; it may execute no program;
- **network and privileges**: a new, empty network namespace inside a new user namespace (``unshare -rn``;
  so a child started as root has no power over the host kernel) when available, TCP ``bind``/``connect`` forbidden by Landlock (ABI >= 4), and every socket, DNS lookup, process
  spawn and out-of-directory write refused by an audit hook (PEP 578) at the Python level;
- **memory**: ``RLIMIT_AS`` (``--sandbox-memory``, default 8 GiB of address space); no core dumps;
- **environment**: scrubbed (no credentials), ``HOME``/``TMPDIR`` inside the work directory, CPU only.

The child writes its result (``.npz``/``.json``/a directory) inside the work directory; the parent, which never
imports TensorFlow, checks it is plain data (``.npz`` read with ``allow_pickle=False``) and writes it to the
requested path atomically. Nothing else leaves the child. Without Landlock the sandbox refuses to run rather
than pretend.

Cost: one extra process start (TensorFlow import) per command.

Reference: Linux Landlock (``Documentation/userspace-api/landlock.rst``); PEP 578 (runtime audit hooks).

Example:
    >>> g = sandboxed("gradients", "model.keras", data="data.npz", loss="mse")   # doctest: +SKIP
    >>> sorted(g)                                                                 # doctest: +SKIP
    ['dense/bias', 'dense/kernel']
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._checks import InputError, ResourceError, format_bytes, parse_size
from .._confine import BLOCKED, blocked_events, confine, landlock_abi

__all__ = ["sandboxed", "run_cli_sandboxed", "landlock_abi", "DEFAULT_MEMORY", "BLOCKED"]

DEFAULT_MEMORY = "8GiB"
OUTPUT_FLAGS = ("--out", "--plot")                    # options naming files the command writes
_SANDBOX_FLAGS = {"--sandbox": 0, "--sandbox-memory": 1, "--timeout": 1}   # parent-only options -> arity
_KEEP_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "CONDA_PREFIX",
             "LD_LIBRARY_PATH", "KERAS_BACKEND", "COLUMNS", "TERM", "NO_COLOR")
_KEEP_PREFIX = ("LC_", "TF_", "OMP_", "MKL_", "OPENBLAS_", "TFPARTIALS_")
_JSON_COMMANDS = {"spectrum": ".json", "check": ".json"}
_DIR_COMMANDS = {"report", "demo"}


# ============================================================================================ parent side
def run_cli_sandboxed(argv: Sequence[str], args: Any) -> int:
    """Run the command line ``argv`` (which contains ``--sandbox``) in the sandbox; the CLI's exit code.

    ``args`` is the parsed namespace of ``argv``: its output paths are checked here, before anything runs.
    """
    from .main import build_parser

    if os.environ.get("TFPARTIALS_SANDBOXED"):
        raise InputError("--sandbox: already inside the sandbox")
    memory = parse_size(getattr(args, "sandbox_memory", None) or DEFAULT_MEMORY, "--sandbox-memory")
    child = _strip_parent_flags(list(argv))
    outputs: dict[str, Path] = {}
    for flag in OUTPUT_FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value:
            outputs[flag] = _check_target(Path(value), bool(getattr(args, "overwrite", False)))
    with _Workdir() as work:
        tmp_out = {flag: work.out / _safe_name(target) for flag, target in outputs.items()}
        child = _rewrite_outputs(child, tmp_out)
        parsed = build_parser().parse_args(child)
        for flag, tmp in tmp_out.items():
            if Path(getattr(parsed, flag[2:])) != tmp or getattr(parsed, "sandbox", False):
                raise InputError(f"--sandbox: could not rewrite {flag}; spell options in full ({flag} PATH)")
        code = _run_child(work, child, _readable_paths(child), memory, stream=True)
        if code == 0:
            for flag, target in outputs.items():
                _deliver(tmp_out[flag], target, bool(getattr(args, "overwrite", False)))
        return code


def sandboxed(command: str, model: str | os.PathLike, data: Any = None, *, memory: str | int = DEFAULT_MEMORY,
              timeout: float | None = None, **options: Any) -> Any:
    """Run ``tfpartials COMMAND MODEL --data DATA [options]`` in the sandbox and return its result as data.

    The model is loaded and differentiated only in the confined child (no network, no writes outside a private
    directory, a memory limit); this process never deserialises it.

    Args:
        command: a CLI command (``"gradients"``, ``"hessian"``, ``"jacobian"``, ...).
        model: path of the model file.
        data: a data file path, or ``(x, y)`` / ``x`` numpy arrays (saved to the work directory as ``.npz``).
        memory: address-space limit of the child (``"8GiB"``).
        timeout: seconds before the child is killed (ResourceError).
        **options: CLI options, ``loss="mse"`` -> ``--loss mse``; ``True`` -> a bare flag; lists repeat.

    Returns:
        ``{name: array}`` for ``.npz`` results, the parsed JSON for ``.json`` results.

    Raises:
        InputError: the command failed in the child (its one-line message), or the sandbox is unavailable.

    Cost: the command's own cost plus one process start (a TensorFlow import, a few seconds).

    Example:
        >>> g = sandboxed("gradients", "model.keras", data=(x, y), loss="mse", wrt=["dense/*"])  # doctest: +SKIP

        The result comes back as data, so writing it is not an option (refused before a child starts):

        >>> import tfpartials as tp
        >>> tp.sandboxed("gradients", "model.keras", out="g.npz")
        Traceback (most recent call last):
            ...
        TypeError: sandboxed: out cannot be passed as options (memory= and timeout= are arguments; the result is returned, not written)
    """
    import numpy as np

    reserved = sorted({"sandbox", "sandbox_memory", "timeout", "out", "quiet"} & set(options))
    if reserved:
        raise TypeError(f"sandboxed: {', '.join(reserved)} cannot be passed as options (memory= and timeout= are "
                        "arguments; the result is returned, not written)")
    limit = parse_size(memory, "memory")
    suffix = _JSON_COMMANDS.get(command, ".npz")
    if command in _DIR_COMMANDS:
        raise InputError(f"sandboxed: {command!r} writes a directory; use the command line with --sandbox")
    with _Workdir() as work:
        argv = [command, os.fspath(model)]
        if data is not None:
            if isinstance(data, str | os.PathLike):
                argv += ["--data", os.fspath(data)]
            else:
                path = work.root / "data.npz"
                x, y = data if isinstance(data, tuple) and len(data) == 2 else (data, None)
                arrays = {"x": np.asarray(x)} | ({} if y is None else {"y": np.asarray(y)})
                np.savez(path, **arrays)
                argv += ["--data", str(path)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is None or value is False:
                continue
            if value is True:
                argv.append(flag)
            elif isinstance(value, list | tuple):
                for v in value:
                    argv += [flag, str(v)]
            else:
                argv += [flag, str(value)]
        result = work.out / f"result{suffix}"
        argv += ["--out", str(result), "--quiet"]
        code = _run_child(work, argv, _readable_paths(argv), limit, stream=False, timeout=timeout)
        if code not in (0, 1) or not os.path.lexists(result):   # 1: a check failed, its results still stand
            raise InputError(work.last_error or f"sandboxed {command} failed (exit code {code})")
        if suffix == ".json":
            return json.loads(_regular_file(result).read_text())
        with np.load(_regular_file(result), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


class _Workdir:
    """A private temporary directory for one child: ``root/out`` for results, ``root/home`` for HOME/TMPDIR."""

    def __enter__(self) -> _Workdir:
        self.root = Path(tempfile.mkdtemp(prefix="tfpartials-sandbox-"))
        self.out = self.root / "out"
        self.home = self.root / "home"
        self.out.mkdir()
        (self.home / "tmp").mkdir(parents=True)
        self.last_error = ""
        return self

    def __exit__(self, *exc) -> bool:
        shutil.rmtree(self.root, ignore_errors=True)
        return False


def _strip_parent_flags(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if name in _SANDBOX_FLAGS:
            i += 1 + (_SANDBOX_FLAGS[name] if "=" not in tok else 0)
            continue
        out.append(tok)
        i += 1
    return out


def _rewrite_outputs(argv: list[str], tmp_out: dict[str, Path]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        name = tok.split("=", 1)[0]
        if name in tmp_out:
            out += [name, str(tmp_out[name])]
            i += 1 if "=" in tok else 2
            continue
        out.append(tok)
        i += 1
    return out


def _safe_name(target: Path) -> str:
    name = target.name or "output"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _check_target(p: Path, overwrite: bool) -> Path:
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output directory does not exist: {parent}")
    if p.exists() and not overwrite and not (p.is_dir() and not any(p.iterdir())):
        raise InputError(f"output {p} already exists; pass --overwrite (overwrite=True) to replace it")
    return p


def _readable_paths(argv: Sequence[str]) -> list[str]:
    """Every command-line token (or ``--opt=value`` value) that names an existing file or directory."""
    found = []
    for tok in argv[1:]:
        for cand in (tok, tok.split("=", 1)[1] if tok.startswith("--") and "=" in tok else None):
            if cand and not cand.startswith("-") and os.path.exists(cand):
                found.append(os.path.abspath(cand))
    return found


def _regular_file(p: Path) -> Path:
    st = os.lstat(p)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"sandbox: the child produced {p.name} as something other than a regular file; refused")
    return p


def _deliver(tmp: Path, target: Path, overwrite: bool) -> None:
    """Check the child's output is plain data and write it to ``target`` atomically."""
    import numpy as np

    from ..io.writers import atomic_directory, atomic_write, save_npz

    if not os.path.lexists(tmp):
        return
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        for root, dirs, files in os.walk(tmp):
            for name in dirs + files:
                mode = os.lstat(os.path.join(root, name)).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise InputError(f"sandbox: the child's output contains {name!r}, not a regular file; refused")
        with atomic_directory(target, overwrite=overwrite) as dest:
            shutil.copytree(tmp, dest, dirs_exist_ok=True)
        return
    _regular_file(tmp)
    if tmp.suffix == ".npz":
        try:
            with np.load(tmp, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise InputError(f"sandbox: the child's output is not plain arrays ({exc}); refused") from None
        save_npz(target, arrays, overwrite=overwrite)
        return
    if tmp.suffix == ".json":
        json.loads(tmp.read_text())
    atomic_write(target, lambda dest: shutil.copyfile(tmp, dest), overwrite=overwrite)


def _child_env(work: _Workdir) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in _KEEP_ENV or k.startswith(_KEEP_PREFIX)}
    env.update(HOME=str(work.home), TMPDIR=str(work.home / "tmp"), KERAS_HOME=str(work.home / ".keras"),
               MPLCONFIGDIR=str(work.home / "mpl"), JOBLIB_MULTIPROCESSING="0", MALLOC_ARENA_MAX="2",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               TFPARTIALS_SANDBOXED="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run_child(work: _Workdir, cli_argv: list[str], readable: list[str], memory: int, *, stream: bool,
               timeout: float | None = None) -> int:
    abi = landlock_abi()
    if abi < 1:
        raise InputError("--sandbox needs Linux Landlock (kernel >= 5.13 with Landlock enabled), which this "
                         "system does not offer; refusing to run an untrusted model without it")
    netns = _netns_prefix()
    cmd = [*netns, sys.executable, "-m", "tfpartials.cli.sandbox", "--workdir", str(work.root), "--cwd", os.getcwd(),
           "--memory", str(memory)]
    for p in readable:
        cmd += ["--read", p]
    cmd += ["--", *cli_argv]
    proc = subprocess.Popen(cmd, cwd=str(work.root), env=_child_env(work), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    errors: list[str] = []
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, sys.stdout if stream else None, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, sys.stderr if stream else None, errors), daemon=True)]
    for t in pumps:
        t.start()
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ResourceError(f"timed out after {timeout:g} s in the sandbox; nothing written") from None
    except BaseException:
        _kill(proc)
        raise
    finally:
        for t in pumps:
            t.join(timeout=5)
    work.last_error = _last_error(errors)
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        msg = (f"sandbox: the computation was killed by {sig}; it may have exceeded the sandbox memory limit of "
               f"{format_bytes(memory)} (raise it with --sandbox-memory)")
        work.last_error = msg
        if stream:
            sys.stderr.write(f"tfpartials: error: {msg}\n")
        return 2
    return code


def _pump(pipe, sink, keep: list[str] | None) -> None:
    for raw in iter(pipe.readline, b""):
        line = raw.decode("utf-8", "replace")
        if keep is not None:
            keep.append(line)
        if sink is not None:
            sink.write(line)
            sink.flush()
    pipe.close()


def _last_error(lines: list[str]) -> str:
    for line in reversed(lines):
        text = line.strip()
        if text:
            return text.removeprefix("tfpartials: error: ")
    return ""


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


_NETNS: list[str] | None = None


def _netns_prefix() -> list[str]:
    """``unshare -r -n`` (a user namespace: also drops root's powers over the kernel, such as loading
    modules) when that works here, else ``unshare -n`` as root, else [] (Landlock still blocks TCP)."""
    global _NETNS
    if _NETNS is None:
        _NETNS = []
        exe = shutil.which("unshare")
        if exe:
            for flags in (["-r", "-n"], ["-n"]) if os.geteuid() == 0 else (["-r", "-n"],):
                try:
                    ok = subprocess.run([exe, *flags, "true"], stdin=subprocess.DEVNULL, capture_output=True,
                                        timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    ok = False
                if ok:
                    _NETNS = [exe, *flags]
                    break
    return list(_NETNS)


def _child_main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.stderr.write("tfpartials: error: usage: python -m tfpartials.cli.sandbox --workdir W --memory N "
                         "[--read P]... -- COMMAND ...\n")
        return 2
    split = argv.index("--")
    opts, cli = argv[:split], argv[split + 1:]
    workdir, cwd, memory, readable = None, None, None, []
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "--workdir":
            workdir = value
        elif key == "--cwd":
            cwd = value
        elif key == "--memory":
            memory = int(value)
        elif key == "--read":
            readable.append(value)
    if not workdir or not memory:
        sys.stderr.write("tfpartials: error: sandbox: --workdir and --memory are required\n")
        return 2
    # the interpreter was started in the (empty, private) work directory, so nothing from the user's
    # current directory could shadow a module; only now move there for relative paths
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(workdir)]
    try:
        confine(workdir, readable, memory)
    except OSError as exc:
        sys.stderr.write(f"tfpartials: error: sandbox: could not confine the child process ({exc}); refusing\n")
        return 2
    if cwd:
        try:
            os.chdir(cwd)
        except OSError:
            pass
    from .common import quiet_tensorflow_import
    from .main import main

    try:
        quiet_tensorflow_import()   # start-up probes of TensorFlow's dependencies (uname, IPv6) are refused
    except (ImportError, MemoryError, OSError) as exc:
        msg = " ".join(str(exc).split())[:160]
        sys.stderr.write(f"tfpartials: error: sandbox: TensorFlow could not start within the memory limit of "
                         f"{format_bytes(memory)} ({type(exc).__name__}: {msg}); raise it with --sandbox-memory\n")
        return 2
    blocked_events.clear()          # here: they are not the model's doing

    return int(main(cli) or 0)


if __name__ == "__main__":  # pragma: no cover - exercised through subprocess tests
    # run from the package module (not this ``__main__`` copy) so that its state is the one the CLI sees
    from tfpartials.cli.sandbox import _child_main as _entry

    sys.exit(_entry(sys.argv[1:]))
