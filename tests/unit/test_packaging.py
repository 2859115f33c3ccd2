"""Packaging promises: operator/ never shadows the stdlib, the runtime never loads the lab."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_stdlib_operator_is_not_shadowed_from_the_repo_root() -> None:
    # From the repo root, the cwd comes first on sys.path and holds a directory named operator/.
    result = run_python("import operator; print(operator.itemgetter(1)([5, 7]), operator.__file__)", REPO)
    assert result.returncode == 0, result.stderr
    value, origin = result.stdout.split()
    assert value == "7"
    assert not origin.startswith(str(REPO)), origin


def test_operator_dir_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_both_packages_are_installed_from_the_source_root() -> None:
    result = run_python("import aks_kms_operator, aks_kms_lab; print(aks_kms_operator.__file__); "
                        "print(aks_kms_lab.__file__)", Path("/"))
    assert result.returncode == 0, result.stderr
    for line in result.stdout.split():
        assert line.startswith(str(REPO / "operator")), line


def test_runtime_never_imports_the_lab() -> None:
    code = (
        "import sys, pkgutil, importlib, aks_kms_operator\n"
        "for m in pkgutil.walk_packages(aks_kms_operator.__path__, 'aks_kms_operator.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.startswith('aks_kms_lab'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = run_python(code, Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "aks-kms-operator"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "run" in result.stdout, result.stderr
