"""What an installed runwarden needs is in its distribution: every package, every SQL file
and the packaged policy (the Docker image installs the wheel, not the source tree)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("models", "migrations", "worker")


def _config() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        setuptools: dict[str, object] = tomllib.load(handle)["tool"]["setuptools"]
    return setuptools


def test_packaging__every_package_is_found() -> None:
    find = _config()["packages"]["find"]  # type: ignore[index]
    found = set(find_packages(str(ROOT), include=find["include"]))
    on_disk = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for top in SHIPPED
        for path in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= found


def test_packaging__every_data_file_is_package_data() -> None:
    package_data: dict[str, list[str]] = _config()["package-data"]  # type: ignore[assignment]
    data_files = [
        path
        for top in SHIPPED
        for path in (ROOT / top).rglob("*")
        if path.is_file() and path.suffix in {".sql", ".toml", ".mako", ".html", ".css", ".js"}
    ]
    assert any(p.suffix == ".sql" for p in data_files)
    assert any(p.suffix == ".html" for p in data_files)
    for path in data_files:
        # Data files live in a package, or in a folder of one (the console's templates/).
        parts = path.relative_to(ROOT).parts[:-1]
        owner = next(
            i
            for i in range(len(parts), 0, -1)
            if (ROOT.joinpath(*parts[:i]) / "__init__.py").exists()
        )
        package = ".".join(parts[:owner])
        name = "/".join((*parts[owner:], path.name))
        patterns = package_data.get(package, [])
        assert any(fnmatch.fnmatch(name, p) for p in patterns), path
