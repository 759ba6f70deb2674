"""SQL and HTTP operators, offline: fetch readings over HTTP, store and query them in SQL.

What it shows
-------------
* ``HttpOperator``: a GET to an endpoint of a Connection (``example_loopback_api``) whose
  JSON answer is checked (``response_check``) and filtered (``response_filter``) into
  the task's XCom; 5xx answers and timeouts would be retried with backoff;
* ``SQLExecuteQueryOperator`` on a SQLite Connection (``example_sqlite``): a list of
  statements run in one transaction, parameters bound by the driver (here values pulled
  from the HTTP task's XCom through templates), and a query whose rows (as dicts) are
  the XCom, bounded by ``max_rows``.

Offline on purpose: the first task starts a tiny HTTP server on 127.0.0.1 (a daemon
thread that stops by itself after two minutes) standing in for a real API, and points the
connection ``example_loopback_api`` at it. The SQLite file is the examples' database,
``$AFLOW_EXAMPLES_DB`` if set, else ``$AFLOW_HOME/examples.db`` (table ``reading``); the
connection ``example_sqlite`` is created for it only when no connection of that id
exists, so
``aflow connections add example_sqlite --uri sqlite:////path/to/other.db`` (or
``AFLOW_CONN_EXAMPLE_SQLITE``) points the example elsewhere. With a real API you would
add ``example_loopback_api`` once the same way and drop the first task.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from aflow import DAG, Connection, HttpOperator, SQLExecuteQueryOperator, task
from aflow.exceptions import ConnectionNotFound
from aflow.runtime.services import current_store
from aflow.secrets import connection_to_record

SERVER_LIFETIME_S = 120.0
READINGS = [
    {"station": "north", "celsius": 11.5},
    {"station": "south", "celsius": 17.25},
    {"station": "east", "celsius": 14.0},
]


class _Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.rstrip("/") != "/v1/readings":
            self.send_error(404, "no such endpoint")
            return
        body = json.dumps({"status": "ok", "readings": READINGS}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # the HttpOperator logs the request on its side


def examples_db_path() -> str:
    """Where the example DAGs keep their results (read at run time, not at import)."""
    explicit = os.environ.get("AFLOW_EXAMPLES_DB")
    if explicit:
        return explicit
    home = os.environ.get("AFLOW_HOME") or os.path.join("~", "aflow")
    return os.path.join(os.path.expanduser(home), "examples.db")


def _start_server() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="example-api", daemon=True).start()
    stopper = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    stopper.daemon = True
    stopper.start()
    return int(server.server_address[1])


with DAG(
    "sql_http_example",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),  # noqa: UP017
    catchup=False,
    tags=["example", "sql", "http"],
):

    @task
    async def prepare_connections() -> dict[str, Any]:
        """Start the stand-in API and make sure both connections exist."""
        store = current_store()
        port = _start_server()
        api = Connection("example_loopback_api", "http", host="127.0.0.1", port=port,
                         description="the stand-in API of dags/sql_http_example.py")
        await store.set_connection(connection_to_record(api, None))
        try:
            db = await Connection.aget("example_sqlite")
        except ConnectionNotFound:
            path = await anyio.Path(examples_db_path()).absolute()
            await path.parent.mkdir(parents=True, exist_ok=True)
            db = Connection("example_sqlite", "sqlite", schema=str(path),
                            description="the SQLite file of dags/sql_http_example.py")
            await store.set_connection(connection_to_record(db, None))
        return {"api_port": port, "sqlite_file": db.schema}

    fetch = HttpOperator(
        task_id="fetch_readings",
        http_conn_id="example_loopback_api",
        endpoint="v1/readings",
        method="GET",
        response_check=lambda response: response.json()["status"] == "ok",
        response_filter=lambda response: response.json()["readings"],
        request_timeout_s=10,
    )

    store_readings = SQLExecuteQueryOperator(
        task_id="store_readings",
        conn_id="example_sqlite",
        sql=[
            "CREATE TABLE IF NOT EXISTS reading ("
            " run_id TEXT NOT NULL, station TEXT NOT NULL, celsius REAL NOT NULL,"
            " PRIMARY KEY (run_id, station))",
            "INSERT INTO reading VALUES (:run_id, :s0, :c0), (:run_id, :s1, :c1),"
            " (:run_id, :s2, :c2)",
        ],
        parameters={
            "run_id": "{{ run_id }}",
            **{f"s{i}": f"{{{{ ti.xcom_pull('fetch_readings')[{i}]['station'] }}}}"
               for i in range(3)},
            **{f"c{i}": f"{{{{ ti.xcom_pull('fetch_readings')[{i}]['celsius'] }}}}"
               for i in range(3)},
        },
    )

    summary = SQLExecuteQueryOperator(
        task_id="summarize",
        conn_id="example_sqlite",
        sql="SELECT station, celsius, celsius - (SELECT avg(celsius) FROM reading"
            " WHERE run_id = :run_id) AS above_mean FROM reading WHERE run_id = :run_id"
            " ORDER BY celsius DESC",
        parameters={"run_id": "{{ run_id }}"},
        output_format="dict",
        max_rows=100,
    )

    prepare_connections() >> fetch >> store_readings >> summary
