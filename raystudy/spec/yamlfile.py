"""Read a study file's YAML once: the data, plus the line of every key path for messages.

The text is composed into a node tree once; the tree is checked, its line marks read, and
the data constructed from it. Two checks guard against hostile or mistaken files:

* anchors and aliases (`&a`, `*a`) share one node, so nine levels of nine-fold aliases fit
  in under 1 KB yet expand to 9^9 values: anything that walks the loaded data (overrides,
  the schema, expansion) would run for minutes. The expanded size is counted on the shared
  tree (each node once) and a document that aliases its way past MAX_NODES is refused;
* a key written twice in one mapping (`train:` twice) is an error: YAML would silently keep
  the second and drop everything in the first.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import StudyError

# Far above any real study (the shipped ones have a few hundred nodes), far below a bomb.
MAX_NODES = 100_000
_MERGE = "tag:yaml.org,2002:merge"


class _Recursive(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _expanded(node: yaml.Node, sizes: dict[int, int], active: set[int]) -> int:
    """Nodes the data will hold once every alias is expanded; each shared node counted once
    (memoized), and the count stops growing past MAX_NODES."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise _Recursive(node)
    active.add(key)
    n = 1
    for child in _children(node):
        n += _expanded(child, sizes, active)
        if n > MAX_NODES:
            break
    active.discard(key)
    sizes[key] = n
    return n


def _check_size(node: yaml.Node, file: str) -> None:
    sizes: dict[int, int] = {}
    try:
        total = _expanded(node, sizes, set())
    except _Recursive as e:
        line = e.node.start_mark.line + 1
        raise StudyError(f"line {line}: an alias refers to the anchor that contains it (a structure "
                         "that never ends)", file=file, hint="write the values out instead of the alias") from None
    # Without aliases every node is written in the file, so its length bounds the walk.
    if total > MAX_NODES and total > len(sizes):
        raise StudyError(f"the YAML's anchors and aliases (&name / *name) expand to more than {MAX_NODES:,} "
                         "values, far beyond any study (an 'alias bomb')", file=file,
                         expected=f"at most {MAX_NODES:,} values once aliases are expanded",
                         hint="write the values out, or use aliases only for small shared sections")


def _marks(node: yaml.Node, file: str, prefix: tuple = (), out: dict | None = None) -> dict:
    """Map each key path to its (line, column), so errors can point into the file; a key
    written twice in one mapping is an error naming both lines."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k)
            path = prefix + (key,)
            line = k.start_mark.line + 1
            if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                if (k.tag, key) in seen:
                    raise StudyError(f"line {line}: duplicate key '{key}' (first written at line "
                                     f"{seen[k.tag, key]})", file=file, path=dotted(path),
                                     hint="keep one of the two: YAML would silently drop the first")
                seen[k.tag, key] = line
            out[path] = (line, k.start_mark.column + 1)
            _marks(v, file, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            path = prefix + (i,)
            out[path] = (v.start_mark.line + 1, v.start_mark.column + 1)
            _marks(v, file, path, out)
    return out


def load_text(text: str, file: str) -> tuple[Any, yaml.Node | None]:
    """(data, node tree) of one YAML document; yaml.YAMLError for malformed text, StudyError
    for a document that is too large once its aliases are expanded."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_size(node, file)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def read_yaml(text: str, file: str) -> tuple[Any, dict]:
    """(data, marks) of a study file; every problem is a StudyError naming the file."""
    try:
        data, node = load_text(text, file)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyError(f"{where}malformed YAML: {problem}", file=file,
                         hint="check indentation and that every 'key: value' has a space after the colon") from None
    except RecursionError:
        raise StudyError("the YAML nests lists or mappings too deeply to read", file=file,
                         hint="a study nests a few levels: check for runaway brackets") from None
    return data, (_marks(node, file) if node is not None else {})


def dotted(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def with_line(err: StudyError, marks: dict | None) -> StudyError:
    """Point an error at its line in the file when its key path (or a parent) is written there."""
    if not marks or not err.path or err.raw.startswith("line "):
        return err
    parts = tuple(int(p) if p.isdigit() else p for p in err.path.split("."))
    for n in range(len(parts), 0, -1):
        m = marks.get(parts[:n])
        if m:
            return StudyError(f"line {m[0]}: {err.raw}", file=err.file, path=err.path,
                              expected=err.expected, hint=err.hint)
    return err
