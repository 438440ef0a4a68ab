"""Code that runs inside a freshly forked, confined child: execute one program, report strings.

The child writes two JSON lines to its result descriptor and exits with ``os._exit`` (no
atexit handlers, no flushing of inherited buffers):

1. the *declaration*, written after compiling and before any of the program's code runs: a
   syntax error, or the answer channels the program's text defines (``solution()`` when it
   binds ``solution`` and never calls it, ``ans``, ``answer``). The program runs only after
   this line is in the pipe and can merely append to it, so the worker trusts this line;
2. the *report*: the answer and the channel that produced it, or the exception type. The
   program shares this process and can write anything here (the descriptor is open while it
   runs), so the worker checks it against the declaration.

Everything the report contains is a plain ``str``; the values a program computes are
converted here, inside the sandbox, so a hostile ``__str__`` can only hang or crash its own
child.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import os
import sys

MAX_ANSWER_CHARS = 4096
RESULT_FD = 3
EXIT_OK = 0
EXIT_NO_FRAME = 70

# Captured at import time in the worker: a program rebinding json.dumps or builtins.str in its
# own child cannot reach these references through the module attributes it patches.
_dumps = json.dumps
_str = str
_type = type
_str_copy = str.__str__


def _as_text(value: object) -> str:
    text = _str(value)
    if _type(text) is not _str:  # a str subclass could carry hostile methods
        text = _str_copy(text)
    return text[:MAX_ANSWER_CHARS]


_CHANNEL_NAMES = ("solution", "ans", "answer")
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _bound_name(node: ast.AST) -> list[str]:
    """Names ``node`` binds (the subset of them that can be answer channels)."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        return [node.id]
    if isinstance(node, _DEFINITIONS):
        return [node.name]
    if isinstance(node, ast.alias):
        return [node.asname or node.name.split(".")[0]]
    if isinstance(node, ast.Global):
        return list(node.names)
    return []


def channels(tree: ast.Module) -> list[str]:
    """The answer channels the program's text defines, in the order they are tried.

    ``solution()`` counts when ``solution`` is bound and never called outside the function's
    own body (a program that calls it has already used its result). Names bound only
    dynamically (``globals()["ans"] = 1``) are not channels.
    """
    bound: set[str] = set()
    solution_called = False
    for statement in tree.body:
        own_body = (
            isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef)
            and statement.name == "solution"
        )
        for node in ast.walk(statement):
            bound.update(n for n in _bound_name(node) if n in _CHANNEL_NAMES)
            if (
                not own_body
                and isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "solution"
            ):
                solution_called = True
    found = ["solution()"] if "solution" in bound and not solution_called else []
    return found + [name for name in ("ans", "answer") if name in bound]


def _report(frame: dict) -> None:
    body = _dumps(frame, ensure_ascii=True).encode("ascii") + b"\n"
    view = memoryview(body)
    while view:
        view = view[os.write(RESULT_FD, view) :]


def _flush_stdout() -> None:
    for stream in (sys.stdout, sys.__stdout__):
        with contextlib.suppress(BaseException):  # a program may have closed or replaced it
            stream.flush()


def _error_frame(exc: BaseException) -> dict:
    return {"status": "error", "error_type": _type(exc).__name__}


def _execute(code, sources: list[str]) -> dict:
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return {"status": "error", "error_type": "SystemExit"}
    except BaseException as exc:
        return _error_frame(exc)
    try:
        for source in sources:
            if source == "solution()":
                solution = namespace.get("solution")
                value = solution() if callable(solution) else None
                if value is not None:
                    return {"status": "ok", "answer": _as_text(value), "answer_source": source}
            elif source in namespace:
                value = namespace[source]
                return {"status": "ok", "answer": _as_text(value), "answer_source": source}
    except BaseException as exc:
        return _error_frame(exc)
    return {"status": "ok", "answer": None, "answer_source": None}


def run_program(source: str):
    """Compile ``source``; return (declaration, run) where ``run()`` executes it as ``__main__``
    and returns the report (``run`` is None after a syntax error)."""
    try:
        tree = compile(source, "<program>", "exec", ast.PyCF_ONLY_AST)
        code = compile(tree, "<program>", "exec")
        sources = channels(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return {"status": "syntax", "error_type": _type(exc).__name__}, None
    return {"status": "compiled", "channels": sources}, lambda: _execute(code, sources)


def run_call(function, args: list[str]):
    """(declaration, run) for a registered worker function (e.g. a LaTeX equivalence check)."""

    def run() -> dict:
        try:
            value = function(*args)
        except BaseException as exc:
            return _error_frame(exc)
        return {"status": "ok", "answer": _as_text(value), "answer_source": "call"}

    return {"status": "compiled", "channels": ["call"]}, run


def child_main(task, stdout_fd: int) -> None:
    """Entry point after confinement; never returns. ``task()`` gives (declaration, run)."""
    code = EXIT_NO_FRAME
    try:
        sys.stdout = io.TextIOWrapper(
            io.FileIO(stdout_fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace"
        )
        sys.stderr = io.StringIO()
        sys.stdin = io.StringIO()
        declaration, run = task()
        _report(declaration)  # before any of the program's code has run
        if run is not None:
            frame = run()
            _flush_stdout()
            _report(frame)
        code = EXIT_OK
    finally:
        os._exit(code)
