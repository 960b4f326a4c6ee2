"""Every public name has an entry in the API reference, and every reference page and tutorial is in the nav."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import pytest

import tfpartials as tp

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api"
ENTRY = re.compile(r"^:::\s+(tfpartials(?:\.\w+)+)\s*$", re.M)


def _entries() -> dict[str, str]:
    out: dict[str, str] = {}
    for page in sorted(API.glob("*.md")):
        for ident in ENTRY.findall(page.read_text(encoding="utf-8")):
            out[ident.rsplit(".", 1)[-1]] = ident
    return out


def _resolve(ident: str):
    parts = ident.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(ident)


def test_every_public_name_has_a_reference_entry():
    entries = _entries()
    missing = sorted(set(tp.__all__) - set(entries))
    assert not missing, f"add these public names to a page in docs/api/: {missing}"


@pytest.mark.parametrize("name", sorted(tp.__all__))
def test_reference_entry_documents_the_public_object(name):
    ident = _entries().get(name)
    if ident is None:
        pytest.skip("reported by test_every_public_name_has_a_reference_entry")
    public = getattr(tp, name)
    if isinstance(public, types.ModuleType):  # a package that is also its function (tp.influence)
        public = getattr(public, name)
    assert _resolve(ident) is public, f"{ident} is not tfpartials.{name}"


def test_reference_pages_and_tutorials_are_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = [f"api/{p.name}" for p in API.glob("*.md")]
    pages += [f"tutorials/{p.name}" for p in (ROOT / "docs" / "tutorials").glob("t*.py")]
    missing = [p for p in pages if p not in nav]
    assert not missing, f"pages missing from the nav of mkdocs.yml: {missing}"


def test_generated_cli_reference_lists_every_command():
    hooks = importlib.util.spec_from_file_location("tfpartials_docs", ROOT / "docs" / "hooks" / "tfpartials_docs.py")
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    mod = importlib.util.module_from_spec(hooks)
    hooks.loader.exec_module(mod)
    text = mod.cli_reference()
    from tfpartials.cli.main import COMMANDS

    for name in COMMANDS:
        if importlib.util.find_spec(f"tfpartials.cli.commands.{name}") is not None:
            assert f"\n## {name}\n" in text
    assert "`--data D`" in text and "`--precision {float32,float64}`" in text
