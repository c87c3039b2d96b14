"""Every name the README shows imports from where the README says.

* every ``import`` / ``from … import`` line of its Python code blocks runs;
* every function of the objectives table is exported by ``manifold_ssl.losses`` and every
  name in its first column is a registered loss;
* every dotted ``manifold_ssl.…`` path in backticks resolves to a module or an attribute;
* every call-style library name in backticks (``snake_name(...)``, ``SomeLoss(...)``) is
  exported by a module the README imports from.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
CODE_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


def _import_statements() -> list[str]:
    """The import statements of the Python code blocks (parenthesised ones joined)."""
    statements = []
    for block in CODE_BLOCKS:
        lines = iter(line.split("#")[0].rstrip() for line in block.splitlines())
        for line in lines:
            if not re.match(r"(from \S+ )?import ", line):
                continue
            statement = line
            if "(" in line and ")" not in line:
                for more in lines:
                    statement += "\n" + more
                    if ")" in more:
                        break
            statements.append(statement)
    return statements


IMPORTS = _import_statements()


def test_the_readme_has_import_lines():
    assert any("manifold_ssl.losses" in s for s in IMPORTS)
    assert any("manifold_ssl.geometry" in s for s in IMPORTS)


@pytest.mark.parametrize("statement", IMPORTS)
def test_every_import_line_of_the_readme_runs(statement):
    exec(compile(statement, "README.md", "exec"), {})


def _objectives_table() -> list[tuple[str, str]]:
    section = TEXT.split("## The objectives", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)`(?:, `[a-z_]+`)? \| (.*?) \|", section, flags=re.M)
    return [(name, functions) for name, functions in rows]


def test_objectives_table_names_exported_functions_and_registered_losses():
    from manifold_ssl import losses

    rows = _objectives_table()
    assert len(rows) >= 12
    for name, functions in rows:
        assert name in losses.LOSSES, name
        for function in re.findall(r"`([a-z_]+)\(", functions):
            assert function in losses.__all__, function


def _resolve(path: str) -> object:
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(path)


@pytest.mark.parametrize("path", sorted(set(re.findall(r"`(manifold_ssl(?:\.\w+)+)`", TEXT))))
def test_every_dotted_path_resolves(path):
    _resolve(path)


def test_every_call_style_name_is_exported_where_the_readme_imports_from():
    modules = {m for s in IMPORTS for m in re.findall(r"from (manifold_ssl\S*) import", s)}
    exported = set()
    for name in modules:
        exported |= set(getattr(importlib.import_module(name), "__all__", []))
    # library-style names: snake_case with an underscore, or a ``…Loss`` class (not ``C(`` or
    # ``log(`` of a formula)
    calls = set(re.findall(r"`([a-z][a-z0-9]*_[a-z0-9_]+|[A-Z][A-Za-z]*Loss)\(", TEXT))
    missing = sorted(calls - exported)
    assert not missing, f"README shows {missing} but no module it imports from exports them"
