"""The package list, which pyproject.toml cannot express: every ``runner.*`` package found, plus
the top-level ``conf/`` (the one source of the configs) installed as the package ``runner.conf``,
so that an installed ``detbench`` finds its configs (runner/__main__.py: ``../conf`` in a
checkout, ``pkg://runner.conf`` installed)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["runner", "runner.*"]), "runner.conf"],
      package_dir={"runner.conf": "conf"})
