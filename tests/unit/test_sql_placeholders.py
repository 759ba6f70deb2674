"""pg_named_to_positional: `:name` becomes `$n` only where PostgreSQL reads SQL, never in
literals, quoted identifiers, dollar-quoted bodies or comments; casts stay; a name with
no value is an error naming it."""

from __future__ import annotations

import pytest

from triggers.sql_placeholders import pg_named_to_positional

P = {"a": 1, "b": "two", "word": "w"}


def rewrite(sql: str, params: dict[str, object] | None = None) -> tuple[str, list[object]]:
    return pg_named_to_positional(sql, P if params is None else params)


def test_placeholders_are_numbered_in_order_of_first_use() -> None:
    assert rewrite("SELECT :b, :a, :b") == ("SELECT $1, $2, $1", ["two", 1])
    assert rewrite(":a") == ("$1", [1])
    assert rewrite("WHERE x=:a AND y=(:b)") == ("WHERE x=$1 AND y=($2)", [1, "two"])
    assert rewrite("SELECT 1") == ("SELECT 1", [])


def test_casts_stay() -> None:
    assert rewrite("SELECT :a::int, x::text, :b ::jsonb") == (
        "SELECT $1::int, x::text, $2 ::jsonb", [1, "two"])


def test_colon_after_a_word_or_number_is_not_a_placeholder() -> None:
    assert rewrite("SELECT arr[1:word], t.x:a") == ("SELECT arr[1:word], t.x:a", [])


def test_slice_without_lower_bound_is_sql_unless_its_name_is_a_parameter() -> None:
    # arr[:hi] with hi a column failed "placeholder :hi has no value" with any dict
    assert rewrite("SELECT arr[:hi], :a FROM t") == ("SELECT arr[:hi], $1 FROM t", [1])
    assert rewrite("SELECT arr[:a] FROM t") == ("SELECT arr[$1] FROM t", [1])
    assert rewrite("SELECT arr[:hi][:b] FROM t") == ("SELECT arr[:hi][$1] FROM t", ["two"])
    assert rewrite("SELECT arr[: :b] FROM t") == ("SELECT arr[: $1] FROM t", ["two"])
    with pytest.raises(ValueError, match=r"placeholder :hi \(line 1\) has no value"):
        rewrite("SELECT arr[ :hi] FROM t")  # only right after `[`


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ':word'",
        "SELECT 'it''s :word'",
        "SELECT 'a' ':word'",  # literal continuation
        "SELECT E'it\\'s :word'",
        "SELECT e'\\\\', ':word'",  # E'\\' ends at the quote after the escaped backslash
        "SELECT X'ab', B'01', U&':word'",
        'SELECT ":word" FROM t',
        'SELECT "a "":word"" b" FROM t',
        "SELECT $$ :word $$",
        "SELECT $fn$ it's :word $$ still $fn$",
        "SELECT $a$ :word $b$ :word $b$ $a$",
        "SELECT 1 -- :word",
        "SELECT 1 -- :word\r",
        "SELECT /* :word */ 1",
        "SELECT /* outer /* :word */ :word */ 1",
        "SELECT /* unclosed :word",
        "SELECT ':word",  # unclosed: the server reports it
    ],
)
def test_no_placeholder_outside_sql(sql: str) -> None:
    assert rewrite(sql) == (sql, [])


def test_placeholders_around_skipped_text_still_count() -> None:
    sql = (
        "SELECT :a, 'x'':b $1', \"c:b\", $$ :b $1 $$, $t$ :b $t$ -- :b $1\n"
        "/* :b /* :b $1 */ */ , :b, :a"
    )
    assert rewrite(sql) == (
        "SELECT $1, 'x'':b $1', \"c:b\", $$ :b $1 $$, $t$ :b $t$ -- :b $1\n"
        "/* :b /* :b $1 */ */ , $2, $1",
        [1, "two"],
    )


def test_dollar_is_not_always_a_quote() -> None:
    # a$b$ and c$1 are identifiers (PostgreSQL allows $ in them), not quotes or parameters
    assert rewrite("SELECT a$b$, :a, c$d, c$1 FROM t") == (
        "SELECT a$b$, $1, c$d, c$1 FROM t", [1])


@pytest.mark.parametrize("sql", ["SELECT $1, :a", "SELECT :a,\n $12", "SELECT :a, :a + $2"])
def test_positional_parameter_beside_named_ones_is_named(sql: str) -> None:
    """`SELECT $1, :a` with {"a": 1} became `SELECT $1, $1`: $1 silently took a's value."""
    number = sql[sql.index("$"):].split(",")[0].split()[0]
    line = sql.count("\n") + 1
    with pytest.raises(ValueError, match=rf"positional placeholder \{number} \(line {line}\) "
                       r"in a statement with :name placeholders"):
        rewrite(sql)


def test_positional_parameter_alone_is_left_to_the_server() -> None:
    # nothing is taken from the dict; in a function body or PREPARE, $1 is its argument
    for sql in ("CREATE FUNCTION f(int) RETURNS int RETURN $1 + 1",
                "PREPARE p(int) AS SELECT $1"):
        assert rewrite(sql) == (sql, [])


def test_a_word_ending_in_e_does_not_open_an_escape_string() -> None:
    # only a lone E/e prefixes an escape string: in 'x\' the backslash is a character
    assert rewrite("SELECT some'x\\', :a") == ("SELECT some'x\\', $1", [1])


def test_missing_name_is_named_with_its_line() -> None:
    with pytest.raises(ValueError, match=r"placeholder :nope \(line 2\).*keys: a, b, word"):
        rewrite("SELECT :a,\n :nope")
    with pytest.raises(ValueError, match=r"placeholder :x .*keys: none"):
        rewrite("SELECT :x", {})
