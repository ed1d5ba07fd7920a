"""Helpers shared by the tests and the benchmarks: servers to start and stop (servers.py), one
server-sent events parser (sse.py), the word error rate of a transcript (audio.py), the tools and
JSON schemas sent to function calling (tools.py) and the pictures sent to vision (images.py).

Imported as `support` with tests/ on sys.path: pytest's conftest.py puts it there, and each
bench script does `sys.path.insert(0, str(REPO / "tests"))` before its imports.
"""
