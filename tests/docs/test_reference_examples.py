"""Every public name's reference entry carries an example that runs as a doctest.

The API reference renders the docstring of each name in ``tfpartials.__all__``. A name counts as having an
example when the doctest finder of its defining module (what ``pytest --doctest-modules`` collects) finds a
test for that very object with at least one example not marked ``+SKIP``. The object's own docstring is what
counts: a class is judged by the class docstring, never by one inherited from a base class or its methods.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import types

import pytest

import tfpartials as tp


def _public(name: str):
    obj = getattr(tp, name)
    if isinstance(obj, types.ModuleType):  # a package that is also its function (tp.influence)
        obj = getattr(obj, name)
    return obj


@functools.cache
def _module_tests(module_name: str) -> dict[str, doctest.DocTest]:
    module = importlib.import_module(module_name)
    return {t.name: t for t in doctest.DocTestFinder(recurse=True).find(module)}


def _runnable(test: doctest.DocTest | None) -> list[doctest.Example]:
    if test is None:
        return []
    return [e for e in test.examples if not e.options.get(doctest.SKIP, False)]


def _collected_test(obj) -> doctest.DocTest | None:
    """The doctest ``--doctest-modules`` runs for ``obj``'s own docstring, or None."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname:
        return None
    return _module_tests(module_name).get(f"{module_name}.{qualname}")


def _parsed(docstring: str) -> list[doctest.Example]:
    return _runnable(doctest.DocTestParser().get_doctest(docstring, {}, "t", None, 0))


@pytest.mark.parametrize("name", sorted(tp.__all__))
def test_public_name_has_a_runnable_example(name):
    obj = _public(name)
    own = obj.__doc__ if isinstance(obj, type) else getattr(obj, "__doc__", None)
    assert own, f"tfpartials.{name} has no docstring of its own"
    assert _parsed(own), (f"the docstring of tfpartials.{name} has no '>>>' example that runs "
                          "(examples marked +SKIP do not count)")
    test = _collected_test(obj)
    assert _runnable(test), (f"no doctest of tfpartials.{name} is collected from {obj.__module__} by "
                             "--doctest-modules (the example would never run)")


def test_the_check_rejects_missing_and_skipped_examples():
    """The rule above is not vacuous: no example, or only skipped ones, fails it."""
    assert _parsed("What it does.\n\nNo example.\n") == []
    assert _parsed(">>> f(1)  # doctest: +SKIP\n2\n") == []
    assert _parsed(">>> x = (1 +\n...      1)  # doctest: +SKIP\n") == []
    assert len(_parsed(">>> f(1)  # doctest: +SKIP\n2\n>>> 1 + 1\n2\n")) == 1

    class Base:
        """Base.

        >>> 1 + 1
        2
        """

    class Derived(Base):
        pass

    assert Derived.__doc__ is None  # an inherited class docstring never counts
