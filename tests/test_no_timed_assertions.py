"""No test asserts on wall-clock time: speed belongs in ``benchmarks/`` (a ratio measured in one
run), and a timed assertion turns a loaded CI machine red. Polling loops that wait for a
process with a deadline are fine; asserting on the clock is not."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
CLOCKS = {"time", "perf_counter", "monotonic", "process_time", "perf_counter_ns", "time_ns"}


def _reads_clock(node: ast.AST, tainted: set[str]) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            f = sub.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if name in CLOCKS and owner in {"time", ""} and (owner or name != "time"):
                return True
        if isinstance(sub, ast.Name) and sub.id in tainted:
            return True
    return False


def timed_assertions(source: str) -> list[int]:
    """Line numbers of ``assert`` statements that read a clock, directly or through names
    assigned from one (``elapsed = time.perf_counter() - start``)."""
    tree = ast.parse(source)
    tainted: set[str] = set()
    for _ in range(3):  # names derived from derived names
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if _reads_clock(node.value, tainted):
                    tainted |= {t.id for t in targets if isinstance(t, ast.Name)}
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Assert) and _reads_clock(node.test, tainted)
    ]


# samples for the detector, with the statement keyword filled in at run time, so that a text
# search for timed assertions over tests/ does not mistake these strings for one
TIMED = "import time\nstart = time.perf_counter()\nelapsed = time.perf_counter() - start\n{a} elapsed < 6.0\n"
CLOCK_CALL = "from time import monotonic\n{a} monotonic() > 0\n"
DEADLINE_ONLY = "import time\ndeadline = time.time() + 5\n{a} True\n"


def test_the_detector_finds_timed_assertions():
    assert timed_assertions(TIMED.format(a="assert")) == [4]
    assert timed_assertions(CLOCK_CALL.format(a="assert")) == [2]
    assert timed_assertions(DEADLINE_ONLY.format(a="assert")) == []


def test_no_test_asserts_on_wall_clock_time():
    found = {
        str(path.relative_to(TESTS)): lines
        for path in sorted(TESTS.rglob("*.py"))
        if (lines := timed_assertions(path.read_text()))
    }
    assert not found, f"assertions on wall-clock time (move them to benchmarks/): {found}"
