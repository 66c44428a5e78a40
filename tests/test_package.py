"""The package as a whole: its layering rule, its version and its packaging metadata."""

from __future__ import annotations

import ast
import importlib.util
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

# found without running segkn/__init__.py; the checkout whose segkn is imported
PACKAGE = Path(importlib.util.find_spec("segkn").origin).parent
PYPROJECT = PACKAGE.parent / "pyproject.toml"


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import statement in ``path``; ``from X import a`` gives X."""
    # the package that holds the file (segkn.engine for segkn/engine/trainer.py and engine/__init__.py)
    package = ".".join(path.relative_to(PACKAGE.parent).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import x` in segkn/atomic.py is `from segkn import x`
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def test_nothing_inside_the_package_imports_its_init():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: imports {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, module in _imported_modules(path)
        if module == "segkn"
    ]
    assert not offenders, "import from the module that defines the name, not from segkn:\n" + "\n".join(
        offenders
    )


def test_version_is_written_only_in_pyproject():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assigned = [
        target.id
        for node in ast.walk(tree)
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        if isinstance(target, ast.Name)
    ]
    assert "__version__" not in assigned, "segkn/__init__.py reads the version from the package metadata"
    import segkn

    assert segkn.__version__ == metadata.version("segkn")


def test_license_is_an_spdx_expression():
    # setuptools deprecates the table form (license = { text = ... }) and License :: classifiers
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert isinstance(project.get("license"), str), f"project.license: {project.get('license')!r}"
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_importing_the_data_stack_makes_no_network_request():
    """albumentations checks pypi.org for updates on import unless NO_ALBUMENTATIONS_UPDATE is set."""
    import os
    import subprocess
    import sys

    probe = (
        "import urllib.request\n"
        "calls = []\n"
        "def record(self, url, *args, **kwargs):\n"
        "    calls.append(getattr(url, 'full_url', url))\n"
        "urllib.request.OpenerDirector.open = record\n"
        "import segkn.data.transforms, segkn.engine.trainer, segkn.inference\n"
        "print(calls)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    # the probe itself sees the request when the switch is off
    env["NO_ALBUMENTATIONS_UPDATE"] = "0"
    probe_off = probe.replace(
        "import segkn.data.transforms, segkn.engine.trainer, segkn.inference", "import albumentations"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe_off], env=env, capture_output=True, text=True, check=True
    )
    assert "pypi.org" in out.stdout, out.stdout + out.stderr
