"""The public API in quallm/__init__.py: every name in __all__ resolves, to the object of its home module."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import quallm


@pytest.mark.parametrize("name", [n for n in quallm.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_home(name: str) -> None:
    value = getattr(quallm, name)
    home = importlib.import_module(quallm._EXPORTS[name])
    assert value is getattr(home, name)


def test_all_and_the_export_table_agree() -> None:
    assert sorted(quallm.__all__) == sorted(["__version__", *quallm._EXPORTS])


def test_unknown_names_are_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        quallm.no_such_thing  # noqa: B018


def test_importing_quallm_imports_no_model_backend() -> None:
    code = "import sys, quallm; print(sorted(m for m in sys.modules if m.startswith(('quallm.', 'openai'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
