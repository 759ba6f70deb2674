"""`:name` placeholders in PostgreSQL text, rewritten to asyncpg's `$1..$n`.

asyncpg binds only positional `$n` parameters; aflow lets a dict bind `:name` on SQLite and
PostgreSQL alike. The rewrite is a small scanner over PostgreSQL's lexical rules, so that
a `:word` is a placeholder only where it is SQL, not text the server reads as data or
ignores:

- string literals `'...'` (a doubled `''` is a quote inside), `E'...'` escape strings
  (also `\\'`), and the `'...'` of `B'..'`, `X'..'` and `U&'..'`;
- quoted identifiers `"..."` (`""` inside);
- dollar-quoted strings `$$...$$` and `$tag$...$tag$` (function bodies);
- `-- line comments` and `/* block comments */`, which nest in PostgreSQL;
- `::type` casts, and a `:` right after a word or number (`arr[1:n]`);
- `[:name]` when `name` is not a key of the parameters: an array slice with no lower
  bound (`arr[:hi]`, `hi` a column). When it is a key, `:name` is a placeholder
  (`arr[:i]` is `arr[$1]`, an element; the slice up to a parameter is `arr[: :hi]`).

Strings are read as with `standard_conforming_strings = on` (PostgreSQL's default since
9.1): a backslash escapes only in `E'...'`. A placeholder whose name is not a key of the
parameters is an error naming it (on SQLite, sqlite3 says the same), and so is a
positional `$1` in a statement that also has `:name` placeholders: the rewrite numbers
the names from `$1`, so it would silently take a named value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["pg_named_to_positional"]


def _word_start(ch: str) -> bool:
    return ch.isalpha() or ch == "_"


def _word_char(ch: str) -> bool:
    """Inside an identifier or keyword; PostgreSQL allows `$` after the first letter."""
    return ch.isalnum() or ch in "_$"


def _end_of_quoted(sql: str, start: int, *, backslash: bool = False) -> int:
    """Index just past the literal or quoted identifier whose quote is at `start`. Its
    quote doubled stands for itself; with `backslash` (E'...') a backslash escapes the
    next character. An unclosed one runs to the end (the server reports it)."""
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        ch = sql[i]
        if backslash and ch == "\\":
            i += 2
        elif ch != quote:
            i += 1
        elif sql.startswith(quote, i + 1):  # doubled: part of the text
            i += 2
        else:
            return i + 1
    return len(sql)


def _end_of_block_comment(sql: str, start: int) -> int:
    """Index just past the `/* ... */` at `start`, counting nested comments."""
    depth = 0
    i = start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def _end_of_line(sql: str, start: int) -> int:
    i = start
    while i < len(sql) and sql[i] not in "\r\n":
        i += 1
    return i


def _dollar_tag(sql: str, start: int) -> str | None:
    """The `$$` or `$tag$` opening a dollar-quoted string at `start`, else None (`$1` is
    a positional parameter: a tag never starts with a digit)."""
    i = start + 1
    if i < len(sql) and _word_start(sql[i]):
        i += 1
        while i < len(sql) and (sql[i].isalnum() or sql[i] == "_"):
            i += 1
    if i < len(sql) and sql[i] == "$":
        return sql[start : i + 1]
    return None


def _end_of_word(sql: str, start: int) -> int:
    i = start
    while i < len(sql) and _word_char(sql[i]):
        i += 1
    return i


def _end_of_name(sql: str, start: int) -> int:
    i = start
    while i < len(sql) and (sql[i].isalnum() or sql[i] == "_"):
        i += 1
    return i


def _skip(sql: str, i: int) -> int:
    """Index just past the token at `i` that holds no placeholder: a literal, a quoted
    identifier, a comment, a word, a cast, or else one character."""
    ch, two = sql[i], sql[i : i + 2]
    if ch in "'\"":
        return _end_of_quoted(sql, i)
    if two == "--":
        return _end_of_line(sql, i)
    if two == "/*":
        return _end_of_block_comment(sql, i)
    if two == "::":
        return i + 2
    if ch == "$":
        tag = _dollar_tag(sql, i)
        if tag is None:
            return i + 1
        close = sql.find(tag, i + len(tag))
        return len(sql) if close < 0 else close + len(tag)
    if _word_start(ch):
        end = _end_of_word(sql, i)
        if sql[i:end] in ("E", "e") and sql.startswith("'", end):  # E'escape string'
            return _end_of_quoted(sql, end, backslash=True)
        return end
    if ch.isdigit():  # a number: its letters (1e5) are not a word
        return _end_of_word(sql, i)
    return i + 1


def _line(sql: str, i: int) -> int:
    return sql.count("\n", 0, i) + 1


def pg_named_to_positional(sql: str, parameters: dict[str, Any]) -> tuple[str, list[Any]]:
    """Rewrite each `:name` placeholder in `sql` to `$n` (the same name, the same `$n`)
    and return the new text with the values in `$n` order. A placeholder whose name is
    not in `parameters`, or a positional `$n` beside `:name` ones (it would take the value
    of whichever name became `$n`), raises ValueError naming it and its line. A `$n`
    alone is left to the server: it binds nothing from the dict, and may be SQL that
    means a function's argument (`CREATE FUNCTION f(int) ... RETURN $1 + 1`, `PREPARE`)."""
    out: list[str] = []
    order: dict[str, int] = {}
    positional: int | None = None  # where the first `$n` is, if any
    i = 0
    while i < len(sql):
        is_placeholder = (
            sql[i] == ":"
            and _word_start(sql[i + 1 : i + 2])  # not "::", not ": "
            and (i == 0 or not _word_char(sql[i - 1]))  # not arr[1:n]
        )
        if positional is None and sql[i] == "$" and sql[i + 1 : i + 2].isdecimal():
            positional = i
        if not is_placeholder:
            end = _skip(sql, i)
            out.append(sql[i:end])
            i = end
            continue
        end = _end_of_name(sql, i + 1)
        name = sql[i + 1 : end]
        if name not in parameters and i > 0 and sql[i - 1] == "[":
            out.append(sql[i:end])  # arr[:hi], a slice with no lower bound: SQL
            i = end
            continue
        if name not in parameters:
            line = _line(sql, i)
            known = ", ".join(sorted(map(str, parameters))) or "none"
            raise ValueError(
                f"placeholder :{name} (line {line}) has no value: it is not a key of "
                f"parameters (keys: {known})"
            )
        number = order.setdefault(name, len(order) + 1)
        out.append(f"${number}")
        i = end
    if positional is not None and order:
        end = positional + 1
        while end < len(sql) and sql[end].isdecimal():
            end += 1
        raise ValueError(
            f"positional placeholder {sql[positional:end]} (line {_line(sql, positional)}) "
            "in a statement with :name placeholders: the names become $1, $2, ..., so it "
            "would take one of their values; write :name for it too, or pass the parameters "
            "as a list"
        )
    return "".join(out), [parameters[name] for name in order]
