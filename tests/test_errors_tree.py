"""The class tree drawn in ``restartable.errors.__doc__`` matches the real classes.

The drawing is parsed line by line: a tree line is a literal-block line of the
docstring that holds a class name, optionally preceded by tree connectors
(``├──``, ``└──``, ``│``) that give its depth, optionally followed by further
base classes in brackets, then a description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from restartable import errors

# "    │   ├── Name (Extra, Bases)  description"
_TREE_LINE = re.compile(
    r"^    (?P<indent>(?:│   |    )*)(?P<branch>[├└]── )?"
    r"(?P<name>[A-Z][A-Za-z0-9_]*)"
    r"(?: \((?P<extra>[A-Za-z0-9_, ]+)\))?"
    r"(?:\s+(?P<description>\S.*))?$"
)


@dataclass
class _Node:
    name: str
    parent: str | None
    extra: tuple[str, ...]
    description: str


def _drawn_tree(doc: str) -> list[_Node]:
    nodes: list[_Node] = []
    stack: list[str] = []  # stack[d] is the name last drawn at depth d
    for line in doc.splitlines():
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 4 + (1 if match["branch"] else 0)
        if depth > len(stack):
            raise AssertionError(f"tree line is deeper than its parent allows: {line!r}")
        del stack[depth:]
        parent = stack[-1] if stack else None
        extra = tuple(name.strip() for name in match["extra"].split(",")) if match["extra"] else ()
        nodes.append(_Node(match["name"], parent, extra, (match["description"] or "").strip()))
        stack.append(match["name"])
    return nodes


def _module_classes() -> dict[str, type[BaseException]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == errors.__name__
    }


def test_the_parser_reads_a_nested_tree() -> None:
    doc = "\n".join(
        [
            "Tree::",
            "",
            "    A (RuntimeError)   root",
            "    ├── B (TypeError, ValueError)   child",
            "    │   └── C   grandchild",
            "    └── D   second child",
        ]
    )
    assert _drawn_tree(doc) == [
        _Node("A", None, ("RuntimeError",), "root"),
        _Node("B", "A", ("TypeError", "ValueError"), "child"),
        _Node("C", "B", (), "grandchild"),
        _Node("D", "A", (), "second child"),
    ]


def test_every_class_is_drawn_once() -> None:
    assert errors.__doc__ is not None
    drawn = [node.name for node in _drawn_tree(errors.__doc__)]
    assert len(drawn) == len(set(drawn)), f"a class is drawn twice: {drawn}"
    assert sorted(drawn) == sorted(_module_classes())
    assert sorted(drawn) == sorted(errors.__all__)


@pytest.mark.parametrize("node", _drawn_tree(errors.__doc__ or ""), ids=lambda node: node.name)
def test_each_class_is_drawn_under_its_real_parent(node: _Node) -> None:
    cls = _module_classes().get(node.name)
    assert cls is not None, f"{node.name} is drawn but is not a class of restartable.errors"
    bases = [base.__name__ for base in cls.__bases__]
    if node.parent is None:
        # A root names all its bases in brackets.
        assert list(node.extra) == bases
    else:
        # The tree shows the first base; the brackets name the others.
        assert bases[0] == node.parent
        assert list(node.extra) == bases[1:]
    assert node.description, f"{node.name} has no line saying when it is raised"
