"""The layers stay sealed (issue 16): models/errors <- store <- service <- the faces.

import-linter checks the imports (pyproject ``[tool.importlinter]``, run by ``dev.py test``
next to ruff). This test checks, from the test suite, what an import graph cannot see: a
face (a module above the service: MCP, CLI, web, export, retention, doctor, ...) reaching the
store through a service object (``svc.store.read_events(...)``, ``self.service.store``), and
it keeps the list of faces whole: a new module that uses the service is one of them.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "server" / "threadloom"
FACES_CONTRACT = "faces-through-service"


def faces() -> list[str]:
    """The modules above the service, as the import contract names them."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["id"] == FACES_CONTRACT]
    assert contract["forbidden_modules"] == ["threadloom.store"]
    return list(contract["source_modules"])


def files_of(module: str) -> list[Path]:
    """The source files of ``threadloom.x`` (a module, or a package and everything in it)."""
    path = PACKAGE.joinpath(*module.split(".")[1:])
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")] if path.with_suffix(".py").is_file() else []


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _settings(node: ast.expr) -> bool:
    """``settings``, ``self.settings``, ``svc.settings``: whose ``.store`` is the setting (a string)."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name.endswith("settings")


def store_reaches(source: str) -> Iterator[tuple[int, str]]:
    """(line, code) of every reach for a ``store`` attribute, except a settings object's."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr == "store" and not _settings(node.value):
            yield node.lineno, ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "store"
        ):
            yield node.lineno, ast.unparse(node)


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every ``import``/``from ... import`` in ``path``."""
    return imports_of(path.read_text(), module_name(path), package=path.name == "__init__.py")


def imports_of(source: str, module: str, *, package: bool = False) -> Iterator[tuple[int, str]]:
    """:func:`imported` of ``source`` as the module ``module`` (a package's ``__init__``: ``package``)."""
    here = module.split(".") if package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, target
            for alias in node.names:  # `from . import store` imports threadloom.store
                yield node.lineno, f"{target}.{alias.name}"


def test_the_checks_see_what_they_are_for() -> None:
    bad = """
async def f(svc, self, settings):
    await svc.store.get_threads([])
    self.service.store.vacuum()
    s = svc.store
    getattr(svc, "store")
    ok = settings.store == "sqlite" or self.settings.store or svc.settings.store
"""
    found = [code for _, code in sorted(store_reaches(bad))]
    assert found == ["svc.store", "self.service.store", "svc.store", "getattr(svc, 'store')"]
    names = {
        name
        for _, name in imports_of(
            "from ..store import make_store\nfrom .. import store\n", "threadloom.cli.x"
        )
    }
    assert {"threadloom.store", "threadloom.store.make_store"} <= names
    assert {n for _, n in imports_of("from .service import X", "threadloom.bundle")} >= {"threadloom.service"}


def test_every_face_in_the_contract_exists() -> None:
    missing = [m for m in faces() if not files_of(m)]
    assert not missing, f"the import contract names modules that do not exist: {missing}"


def test_no_face_reaches_the_store_through_the_service() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {code}"
        for module in faces()
        for path in files_of(module)
        for line, code in store_reaches(path.read_text())
    ]
    assert not found, (
        "modules above the service reach into the store; call (or add) a service method instead:\n"
        + "\n".join(found)
    )


def test_no_face_imports_the_store() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for module in faces()
        for path in files_of(module)
        for line, name in imported(path)
        if name == "threadloom.store" or name.startswith("threadloom.store.")
    ]
    assert not found, "modules above the service import the store:\n" + "\n".join(found)


def test_every_module_that_uses_the_service_is_a_face() -> None:
    """A new module that imports the service sits above it: it must be in the contract too."""
    listed = {p for m in faces() for p in files_of(m)}
    inside = {*(PACKAGE / "service").rglob("*.py"), PACKAGE / "__init__.py"}
    users = sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if path not in inside
        and any(
            name == "threadloom.service" or name.startswith("threadloom.service.")
            for _, name in imported(path)
        )
    )
    unlisted = [str(p.relative_to(ROOT)) for p in users if p not in listed]
    assert not unlisted, f"add these to the {FACES_CONTRACT!r} contract in pyproject.toml: {unlisted}"
