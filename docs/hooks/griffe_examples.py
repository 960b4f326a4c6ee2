"""Griffe extension: read a Google-style ``Example:`` section as ``Examples:``.

Both spellings are Google style, but griffe parses only ``Examples:`` into highlighted doctest blocks and
renders ``Example:`` as prose (where ``>>>`` becomes nested quotes). The docstrings are left as they are.
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, node, obj, agent, **kwargs) -> None:
        doc = obj.docstring
        if doc is not None and "Example:" in doc.value:
            doc.value = _EXAMPLE.sub(r"\1Examples:", doc.value)
