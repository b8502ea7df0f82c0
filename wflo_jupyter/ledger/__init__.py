"""The PostgreSQL ledger: models, Alembic migrations, step records and the event outbox."""

from wflo_jupyter.ledger.store import Ledger, ensure_database

__all__ = ["Ledger", "ensure_database"]
