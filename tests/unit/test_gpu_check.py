"""`nexa gpu` asks each library in a process of its own: one that crashes is reported, the rest answer."""

from __future__ import annotations

import sys

from nexa import gpu_check


def test_a_library_that_crashes_is_reported_with_where_it_crashed() -> None:
    crash = "import faulthandler, ctypes; faulthandler.enable(); print('device 0: found'); ctypes.string_at(0)"
    lines = gpu_check.ask("onnxruntime", [sys.executable, "-c", crash])
    assert lines[0] == "onnxruntime: crashed while loading (killed by SIGSEGV); its last lines:"
    assert lines[1] == "  | Fatal Python error: Segmentation fault"
    assert any("string_at" in line for line in lines[2:])


def test_a_library_that_answers_gives_its_lines() -> None:
    lines = gpu_check.ask("x", [sys.executable, "-c", "print('a'); print('b')"])
    assert lines == ["a", "b"]


def test_a_library_that_cannot_load_says_why() -> None:
    gpu_check.CHECKS["missing"] = lambda: [__import__("no_such_gpu_library")]  # type: ignore[list-item]
    try:
        assert gpu_check.lines_of("missing") == [
            "missing: cannot be loaded (ModuleNotFoundError: No module named 'no_such_gpu_library')"
        ]
    finally:
        del gpu_check.CHECKS["missing"]
