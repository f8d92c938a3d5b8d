"""The comments written beside a dataclass's fields, read from its source: the fields' command-line help.

A field's doc is the comment on its own line(s) (``max_side: int = 1024  # longest image side``), else
the block of comment lines right above it. Comments are where this codebase already documents its
config values, so the help is not written a second time.
"""

from __future__ import annotations

import ast
import functools
import inspect
import io
import textwrap
import tokenize


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each annotated field of ``cls`` with its comment ('' when it has none); {} when the source is unavailable."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source file (frozen or interactive): options simply lack help
        return {}
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, the line is only this comment)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.string.lstrip("#").strip(), tok.line.lstrip().startswith("#"))
    docs = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            docs[node.target.id] = " ".join(_comment_of(node, comments))
    return docs


def _comment_of(node: ast.AnnAssign, comments: dict[int, tuple[str, bool]]) -> list[str]:
    """The trailing comments of the statement, else the whole-line comments right above it."""
    trailing = [text for line, (text, whole) in sorted(comments.items())
                if node.lineno <= line <= node.end_lineno and not whole]
    if trailing:
        return trailing
    above, line = [], node.lineno - 1
    while line in comments and comments[line][1]:
        above.insert(0, comments[line][0])
        line -= 1
    return above
