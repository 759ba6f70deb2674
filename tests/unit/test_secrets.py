"""Connection URIs, masking, encryption and template references, without a store."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from aflow.exceptions import ConfigError, SecretsError
from aflow.secrets import Connection, EnvironmentBackend, generate_key, mask, mask_value
from aflow.secrets.backends import configure_secrets, load_backend, parse_backends
from aflow.secrets.crypto import SecretCipher
from aflow.secrets.masking import add_secret, forget_secrets, is_sensitive_key
from aflow.secrets.templates import find_refs, secret_refs


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()
    configure_secrets()


def test_uri_fields_and_round_trip() -> None:
    uri = "postgresql://us%40er:p%40ss%3Aw%2Frd@db.example:5432/my%20db?sslmode=require&x=1"
    c = Connection.from_uri("db", uri)
    assert (c.conn_type, c.host, c.port, c.login, c.password, c.schema) == (
        "postgresql", "db.example", 5432, "us@er", "p@ss:w/rd", "my db")
    assert c.extra == {"sslmode": "require", "x": "1"}
    assert Connection.from_uri("db", c.get_uri()) == c


@pytest.mark.parametrize("uri", [
    "sqlite:////abs/path/file.db",
    "http://example.org",
    "https://user@api.example:8443/v1",
    "google-cloud-platform://?__extra__=%7B%22a%22%3A+%5B1%2C+2%5D%7D",
    "postgres://u:@h/d",
    "http://[::1]:8080/x",
])
def test_uris_survive_a_round_trip(uri: str) -> None:
    c = Connection.from_uri("x", uri)
    assert Connection.from_uri("x", c.get_uri()) == c


def test_airflow_details_type_from_scheme_json_extra_and_sqlite_path() -> None:
    c = Connection.from_uri("g", "google-cloud-platform://?__extra__=%7B%22a%22%3A%201%7D")
    assert c.conn_type == "google_cloud_platform" and c.extra == {"a": 1}
    assert Connection.from_uri("s", "sqlite:////tmp/a.db").schema == "/tmp/a.db"
    assert Connection.from_uri("p", "postgres://u:@h/d").password == ""
    j = Connection.from_text("j", '{"conn_type": "http", "host": "h", "port": "80", '
                                  '"extra": "{\\"k\\": 1}"}')
    assert (j.conn_type, j.host, j.port, j.extra) == ("http", "h", 80, {"k": 1})


@pytest.mark.parametrize(("uri", "message"), [
    ("no scheme here", "is not a connection URI"),
    ("http:/one-slash", "is not a connection URI"),
    ("http://h:notaport", "port 'notaport'"),
    ("http://h:0", "port '0'"),
    ("http://h?__extra__=%5B1%5D", "__extra__ is not a JSON object"),
])
def test_bad_uris_are_named(uri: str, message: str) -> None:
    with pytest.raises(SecretsError, match=message):
        Connection.from_uri("x", uri)


def test_a_bad_uri_error_does_not_show_the_password() -> None:
    with pytest.raises(SecretsError) as info:
        Connection.from_uri("x", "nothing-but-user:hunter2-secret@host")
    assert "hunter2-secret" not in str(info.value)


def test_repr_hides_the_password() -> None:
    c = Connection("x", "http", password="pw-value")
    assert "pw-value" not in repr(c) and "***" in repr(c)
    assert c.to_dict()["password"] == "***" and c.to_dict(reveal=True)["password"] == "pw-value"


def test_masking() -> None:
    assert mask("nothing known") == "nothing known"
    add_secret("s3cret!value")
    add_secret("ab")  # too short to mask
    add_secret({"nested": ["deep-secret"]})
    assert mask("a s3cret!value and deep-secret, ab") == "a *** and ***, ab"
    assert mask("url-quoted: s3cret%21value") == "url-quoted: ***"
    assert mask_value({"k": ["x s3cret!value"]}) == {"k": ["x ***"]}
    for key in ("db_password", "API_KEY", "github_token", "Secret", "passwd", "my_private_key"):
        assert is_sensitive_key(key), key
    assert not is_sensitive_key("greeting")


def test_cipher_round_trip_rotation_and_bad_keys() -> None:
    old, new = generate_key(), generate_key()
    token = SecretCipher(old).encrypt("hello")
    assert "hello" not in token
    assert SecretCipher(f"{new},{old}").decrypt(token, "x") == "hello"
    with pytest.raises(SecretsError, match="another core.fernet_key"):
        SecretCipher(new).decrypt(token, "connection 'x'")
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        SecretCipher("too-short")


@pytest.mark.anyio
async def test_environment_backend() -> None:
    env = EnvironmentBackend({"AFLOW_CONN_MY_DB": "sqlite:////x.db", "AFLOW_VAR_FOO": "bar"})
    conn = await env.get_connection("my_db")
    assert conn is not None and conn.schema == "/x.db" and conn.conn_id == "my_db"
    assert await env.get_variable("foo") == "bar"
    assert await env.get_variable("other") is None and await env.get_connection("o") is None


def test_backends_setting() -> None:
    assert parse_backends(" a.b:C , d.e:F ") == ["a.b:C", "d.e:F"]
    assert isinstance(load_backend("aflow.secrets:EnvironmentBackend"), EnvironmentBackend)
    with pytest.raises(ConfigError, match="package.module:ClassName"):
        load_backend("no_colon")
    with pytest.raises(ConfigError, match="cannot be imported"):
        load_backend("aflow.secrets:Nope")
    with pytest.raises(ConfigError, match="is not a aflow.secrets.SecretsBackend"):
        load_backend("aflow.secrets:Variable")


def test_template_references_are_found() -> None:
    refs = find_refs([
        "{{ var.value.a }} {{ var.json.b.c }} {{ var.value.get('d', 'x') }} {{ var.json['e'] }}",
        "{{ conn.db.host }} {{ conn.get('api').login }} {{ conn['w-1'].port }}",
        "nothing {{ ds }} variance connection",
    ])
    assert refs == (frozenset({"a", "b", "d", "e"}), frozenset({"db", "api", "w-1"}))
    assert find_refs(["{{ ds }}", "plain"]) is None
    task = SimpleNamespace(template_fields=("cmd", "env"), cmd="{{ var.value.k }}",
                           env={"X": ["{{ conn.c.host }}"]})
    assert secret_refs(task) == (frozenset({"k"}), frozenset({"c"}))
    task.cmd = "changed"  # cached on the task
    assert secret_refs(task) == (frozenset({"k"}), frozenset({"c"}))


def test_json_form_errors_are_named() -> None:
    with pytest.raises(SecretsError, match="needs a conn_type"):
        Connection.from_text("x", '{"host": "h"}')
    with pytest.raises(SecretsError, match="unknown field"):
        Connection.from_text("x", '{"conn_type": "http", "hots": "h"}')
    with pytest.raises(SecretsError, match="not valid JSON"):
        Connection.from_text("x", '{"conn_type": ')
