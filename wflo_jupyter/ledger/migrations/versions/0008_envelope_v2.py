"""event envelope v2 (version, session, step) and the topics wflo.costs, wflo.audit

Every outbox envelope now carries ``version`` (its type's schema version), ``session``
and ``step`` (``core.events``). Envelopes built in Python set them; the ones Postgres
builds (``wflo_reserve``, ``wflo_finish``, cached calls) do not, so a row trigger,
``outbox_envelope`` (BEFORE INSERT, on rows without ``version`` or ``session``), fills
what an envelope lacks (about 40 us a row on a 2-core machine):

- ``version``: 2 (every type those functions write, ``llm.call`` and ``budget.*``, is at
  version 2; a writer of another version sets it itself);
- ``step``: the payload's ``step_id``, else a cell budget's key (``kind`` ``cell``);
- ``session``: the payload's ``session_id``, else the session of ``step`` (``steps``).

No column is added: ``session`` and ``step`` are derived from what the row already says.

The topics ``wflo.llm`` and ``wflo.budgets`` became ``wflo.costs`` (calls, thresholds,
reservations and settlements) and ``wflo.audit`` (budgets set by a person): unsent rows
still naming the old topics are moved (sent ones stay as they were published).

Revision ID: 0008_envelope_v2
Revises: 0007_outbox_notify
"""

from alembic import op

revision = "0008_envelope_v2"
down_revision = "0007_outbox_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION wflo_outbox_envelope() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v_payload jsonb := NEW.envelope -> 'payload';
            v_step text := NEW.envelope ->> 'step';
            v_session text := NEW.envelope ->> 'session';
        BEGIN
            IF NEW.envelope ? 'version' AND v_step IS NOT NULL AND v_session IS NOT NULL THEN
                RETURN NEW;
            END IF;
            v_step := coalesce(v_step, v_payload ->> 'step_id',
                               CASE WHEN v_payload ->> 'kind' = 'cell'
                                    THEN v_payload ->> 'key' END);
            v_session := coalesce(v_session, v_payload ->> 'session_id');
            IF v_session IS NULL AND v_step IS NOT NULL THEN
                SELECT s.session_id INTO v_session FROM steps AS s WHERE s.id = v_step;
            END IF;
            NEW.envelope := NEW.envelope
                || jsonb_build_object('version', coalesce(NEW.envelope -> 'version', '2'),
                                      'session', v_session, 'step', v_step);
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_envelope BEFORE INSERT ON outbox FOR EACH ROW "
        "WHEN (NOT NEW.envelope ? 'version' OR NEW.envelope ->> 'session' IS NULL) "
        "EXECUTE FUNCTION wflo_outbox_envelope()"
    )
    op.execute(
        """
        UPDATE outbox SET topic = CASE
            WHEN event_type = 'budget.updated' AND envelope #>> '{payload,op}' = 'set'
                THEN 'wflo.audit'
            ELSE 'wflo.costs' END
        WHERE sent_at IS NULL AND topic IN ('wflo.llm', 'wflo.budgets')
        """
    )


def downgrade() -> None:
    op.execute(
        """
        UPDATE outbox SET topic = CASE WHEN event_type = 'llm.call' THEN 'wflo.llm'
                                       ELSE 'wflo.budgets' END
        WHERE sent_at IS NULL AND topic IN ('wflo.costs', 'wflo.audit')
          AND event_type IN ('llm.call', 'budget.updated', 'budget.threshold')
        """
    )
    op.execute("DROP TRIGGER outbox_envelope ON outbox")
    op.execute("DROP FUNCTION wflo_outbox_envelope()")
