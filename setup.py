"""Package discovery for the design card's layout: each top-level folder is a subpackage of `adfm`.

Metadata lives in pyproject.toml; this only maps folders (and every subfolder with an
`__init__.py`) onto `adfm.<folder>…`, so a new subpackage needs no edit here.
"""

from pathlib import Path

from setuptools import setup

FOLDERS = {"adfm": "adfm", "adfm.trainer": "trainer", "adfm.export": "export",
           "adfm.camera": "camera", "adfm.appliance": "appliance",
           "adfm.plant": "plant"}


def _discover() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in FOLDERS.items():
        package_dir[name] = folder
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            packages.append(".".join((name, *rel)))
    return packages, package_dir


packages, package_dir = _discover()
setup(packages=packages, package_dir=package_dir)
