from aflow.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
