"""Packages of the `twofold` distribution: each top-level folder of the repository installs as `twofold.<folder>`.

pyproject.toml holds everything else; only this mapping needs code (setuptools' package-dir maps a package to a
folder, but the package list must still name every subpackage).
"""

from setuptools import find_namespace_packages, setup

#: The repository's top-level packages, installed as twofold.<name>.
ROOTS = ("core", "store", "api", "workers", "cli", "teacher_server", "migrations")

if __name__ == "__main__":  # setuptools runs this file as __main__; scripts/typing_view.py imports ROOTS
    packages = [
        f"twofold.{p}"
        for root in ROOTS
        for p in (root, *find_namespace_packages(include=[f"{root}.*"], exclude=["*__pycache__*"]))
    ]
    setup(packages=packages, package_dir={f"twofold.{root}": root for root in ROOTS})
