"""Code that runs inside a freshly forked, confined child: execute one program, report strings.

The child writes exactly one JSON object to its result descriptor and exits with ``os._exit``
(no atexit handlers, no flushing of inherited buffers). Everything the report contains is a
plain ``str``; the values a program computes are converted here, inside the sandbox, so a
hostile ``__str__`` can only hang or crash its own child.
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


def _solution_called(tree: ast.Module) -> bool:
    """True when the program itself calls ``solution()`` outside the function's own body."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "solution":
            continue
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Name)
                and sub.func.id == "solution"
            ):
                return True
    return False


def _report(frame: dict) -> None:
    body = _dumps(frame, ensure_ascii=True).encode("ascii")
    view = memoryview(body)
    while view:
        view = view[os.write(RESULT_FD, view) :]


def _flush_stdout() -> None:
    for stream in (sys.stdout, sys.__stdout__):
        with contextlib.suppress(BaseException):  # a program may have closed or replaced it
            stream.flush()


def _error_frame(exc: BaseException) -> dict:
    return {"status": "error", "error_type": _type(exc).__name__}


def run_program(source: str) -> dict:
    """Execute ``source`` as ``__main__`` and pick its answer; returns the report frame."""
    try:
        tree = compile(source, "<program>", "exec", ast.PyCF_ONLY_AST)
        code = compile(tree, "<program>", "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return {"status": "syntax", "error_type": _type(exc).__name__}
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return {"status": "error", "error_type": "SystemExit"}
    except BaseException as exc:
        return _error_frame(exc)
    try:
        solution = namespace.get("solution")
        if callable(solution) and not _solution_called(tree):
            value = solution()
            if value is not None:
                return {"status": "ok", "answer": _as_text(value), "answer_source": "solution()"}
        for name in ("ans", "answer"):
            if name in namespace:
                return {"status": "ok", "answer": _as_text(namespace[name]), "answer_source": name}
    except BaseException as exc:
        return _error_frame(exc)
    return {"status": "ok", "answer": None, "answer_source": None}


def run_call(function, args: list[str]) -> dict:
    """Run a registered worker function (e.g. a LaTeX equivalence check) on string arguments."""
    try:
        value = function(*args)
    except BaseException as exc:
        return _error_frame(exc)
    return {"status": "ok", "answer": _as_text(value), "answer_source": "call"}


def child_main(task, stdout_fd: int) -> None:
    """Entry point after confinement; never returns."""
    code = EXIT_NO_FRAME
    try:
        sys.stdout = io.TextIOWrapper(
            io.FileIO(stdout_fd, "w", closefd=False), encoding="utf-8", errors="backslashreplace"
        )
        sys.stderr = io.StringIO()
        sys.stdin = io.StringIO()
        frame = task()
        _flush_stdout()
        _report(frame)
        code = EXIT_OK
    finally:
        os._exit(code)
