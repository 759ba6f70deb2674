"""triggers.pg_options and the PostgreSQL side of triggers.sql.parse_dsn: which extras a
connection may carry, which are ignored, and that errors never show a secret."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import parse_qsl, urlsplit

import pytest

from aflow.secrets.masking import SENSITIVE_WORDS, is_sensitive_key
from triggers.conn_uri import SECRET_WORDS, is_secret_option
from triggers.pg_options import PG_IGNORED_OPTIONS, PG_OPTIONS, checked_pg_options
from triggers.sql import parse_dsn

AIRFLOW_EXTRAS = {
    "cursor": "dictcursor", "iam": False, "aws_conn_id": "aws_default", "redshift": False,
    "cluster-identifier": "c1", "keepalives": "1", "keepalives_idle": "30",
    "keepalives_interval": "10", "keepalives_count": "5", "tcp_user_timeout": "1000",
    "sslcompression": "0", "gssencmode": "disable",
}


def test_extras_meant_for_airflow_or_libpq_are_dropped_and_returned() -> None:
    """A connection ported from Airflow failed every SQL task on its `cursor` or
    `keepalives_idle`; now they are dropped, and named for the caller's warning."""
    checked = checked_pg_options({**AIRFLOW_EXTRAS, "sslmode": "require", "search_path": "s"})
    assert checked.options == [("sslmode", "require"), ("search_path", "s")]
    assert checked.ignored == sorted(AIRFLOW_EXTRAS)
    assert set(AIRFLOW_EXTRAS) <= set(PG_IGNORED_OPTIONS)


def test_an_unknown_extra_is_still_an_error_naming_it_and_what_is_accepted() -> None:
    with pytest.raises(ValueError) as err:
        checked_pg_options({"cursor": "dictcursor", "sslmdoe": "require", "serach_path": "x"})
    text = str(err.value)
    assert text.startswith("unknown extras serach_path, sslmdoe:")
    assert "cursor" not in text.split(":")[0]
    assert ", ".join(PG_OPTIONS) in text
    assert "keepalives_idle" in text and "are ignored" in text


@pytest.mark.parametrize("value", ["utf8", "UTF8", "utf-8", "Unicode"])
def test_client_encoding_utf8_is_dropped_silently(value: str) -> None:
    checked = checked_pg_options({"client_encoding": value, "application_name": "a"})
    assert checked.options == [("application_name", "a")]
    assert checked.ignored == []


@pytest.mark.parametrize("value", ["latin1", "SQL_ASCII", 8])
def test_client_encoding_other_than_utf8_is_an_error(value: object) -> None:
    with pytest.raises(ValueError, match="client_encoding .*not supported.*UTF8 only"):
        checked_pg_options({"client_encoding": value})


@pytest.mark.parametrize("key", ["password", "sslpassword", "search_path", "application_name"])
@pytest.mark.parametrize("value", [98127364519, ["Hunter2-secret"], {"v": "Hunter2-secret"}])
def test_a_value_that_is_not_text_is_shown_by_its_type_never_itself(
    key: str, value: object
) -> None:
    """`extra sslpassword=98127364519 is not valid` showed the secret in the task's error
    and in the triggerer's stored message, where the masking does not reach."""
    with pytest.raises(ValueError) as err:
        checked_pg_options({key: value})
    text = str(err.value)
    assert f"extra {key} of type {type(value).__name__} is not valid: use text" == text
    assert "98127364519" not in text and "Hunter2" not in text


def test_parse_dsn_errors_show_no_secret_from_a_json_extra() -> None:
    dsn = ('postgresql://u:pw-Secret-1@db:5432/x?__extra__='
           '%7B%22sslpassword%22%3A%2098127364519%7D')
    with pytest.raises(ValueError) as err:
        parse_dsn(dsn, name="connection 'c'")
    text = str(err.value)
    assert "extra sslpassword of type int" in text
    assert "98127364519" not in text and "pw-Secret-1" not in text


def test_parse_dsn_errors_mask_options_whose_name_says_secret() -> None:
    """An unknown extra is shown in the DSN the error quotes; one whose name says it holds
    a secret (as the secret masking reads names) is masked there."""
    with pytest.raises(ValueError) as err:
        parse_dsn("postgresql://u@db/x?api_token=Tok-123456&aws_secret_access_key=Sk-98765")
    text = str(err.value)
    assert "unknown extras api_token, aws_secret_access_key" in text
    assert "Tok-123456" not in text and "Sk-98765" not in text


def test_secret_words_are_the_secret_maskings() -> None:
    """triggers does not import aflow, so it keeps its own copy of the words."""
    assert SECRET_WORDS == SENSITIVE_WORDS
    for key in ("password", "sslpassword", "api_token", "client_secret", "port", "passfile"):
        assert is_secret_option(key) == is_sensitive_key(key), key


def test_parse_dsn_warns_once_per_connection_about_ignored_extras(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"connection 'ported_{uuid.uuid4().hex[:8]}'"
    dsn = "postgresql://u@db/x?cursor=dictcursor&keepalives_idle=30&client_encoding=UTF8"
    with caplog.at_level(logging.WARNING, logger="triggers.sql"):
        first = parse_dsn(dsn, name=name)
        parse_dsn(dsn, name=name)
    warnings = [r.getMessage() for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "cursor, keepalives_idle" in warnings[0] and "no effect in aflow" in warnings[0]
    assert "client_encoding" not in warnings[0]
    assert urlsplit(first.target).query == ""  # none of them reaches asyncpg


def test_a_host_only_in_the_options_is_the_host() -> None:
    """`Connection(port=5432, extra={"host": "db"})` is written `u:p@:5432/x?host=db`;
    asyncpg read the empty host before the port as the host and ignored the option."""
    dsn = parse_dsn("postgresql://u:p@:6543/x?host=db&sslmode=require")
    parts = urlsplit(dsn.target)
    assert parts.hostname is None and parts.port is None
    assert parts.username == "u" and parts.password == "p" and parts.path == "/x"
    assert parse_qsl(parts.query) == [("host", "db"), ("sslmode", "require"), ("port", "6543")]
    assert dsn.shown == "postgresql://u:***@/x?host=db&sslmode=require&port=6543"
    # the URI's own port wins over a port option, as in asyncpg
    other = parse_dsn("postgresql://u@:6543/x?port=7000&host=db")
    assert parse_qsl(urlsplit(other.target).query) == [("host", "db"), ("port", "6543")]
    # a host in the URI is left as it is
    same = parse_dsn("postgresql://u@h:6543/x?host=db")
    assert urlsplit(same.target).netloc == "u@h:6543"
