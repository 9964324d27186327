"""Only here because cffi's `cffi_modules` hook is a setup() keyword; all metadata is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["src/loopix/sphinx/_build.py:ffibuilder"])
