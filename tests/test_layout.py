"""The package stays readable and layered: module and function sizes, no private names across
modules, and the torch-free planning path. (The import direction itself is the import-linter
contract in pyproject.toml, run by .ci/run.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "budgetlm"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


def test_no_module_over_500_lines() -> None:
    long = [f"{_name(p)} ({n})" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "modules over 500 lines: " + ", ".join(long)


def test_no_function_over_80_lines() -> None:
    long = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_name(p)}:{node.lineno} {node.name} ({n})")
    assert not long, "functions over 80 lines: " + ", ".join(long)


def test_no_private_name_imported_across_modules() -> None:
    found = []
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("budgetlm"):
                private = [a.name for a in node.names if a.name.startswith("_")
                           and not a.name.startswith("__")]
                if private:
                    found.append(f"{_name(p)}:{node.lineno} {node.module}: {', '.join(private)}")
    assert not found, "private names imported from other modules: " + "; ".join(found)


@pytest.mark.parametrize("module", ["budgetlm.plan", "budgetlm.estimate", "budgetlm.hardware",
                                    "budgetlm.laws", "budgetlm.config", "budgetlm.units"])
def test_planning_path_imports_no_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imported torch"
