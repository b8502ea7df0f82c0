"""outbox inserts notify the relay; the relay leader's heartbeat

Until now a relay found new outbox rows by polling (every second in a kernel, at the next
kernel's start in practice). A statement trigger on ``outbox`` now sends
``pg_notify('wflo_outbox', '')`` when an insert commits (one notification per
transaction: Postgres folds identical payloads), so a listening relay wakes within
milliseconds. Inserts from SQL functions (``wflo_reserve``, ``wflo_finish``, budget
changes) and from Python are covered alike.

``outbox_relay`` holds one row: the backend pid of the relay that holds the leader lock
(a session advisory lock, ``ledger.outbox.RELAY_LOCK_KEY``) and when it last made
progress. A standby relay compares that time with its lease and may terminate a holder
that is stuck (stopped, hung) so that the lock is released and it can take over.

Revision ID: 0007_outbox_notify
Revises: 0006
"""

from alembic import op

revision = "0007_outbox_notify"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION wflo_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('wflo_outbox', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION wflo_outbox_notify()"
    )
    op.execute(
        """
        CREATE TABLE outbox_relay (
            id smallint PRIMARY KEY CHECK (id = 1),
            backend_pid integer NOT NULL,
            holder text NOT NULL,
            beat_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE outbox_relay")
    op.execute("DROP TRIGGER outbox_notify ON outbox")
    op.execute("DROP FUNCTION wflo_outbox_notify()")
