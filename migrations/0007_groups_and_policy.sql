-- Issue 12: groups of executions with a concurrency limit, per-execution retention,
-- and follow-up queries on a stored result. See src/store/groups.rs.

-- A group: members created together, at most `concurrency` of them in flight at once.
-- `group_key` is the client's `group_id` (an idempotency key per tenant) or the id.
CREATE TABLE execution_groups (
    id                  uuid PRIMARY KEY,
    tenant              text NOT NULL,
    group_key           text NOT NULL,
    created_by          text NOT NULL,
    concurrency         integer NOT NULL CHECK (concurrency >= 1),
    created_at          timestamptz NOT NULL DEFAULT now(),
    cancel_requested_at timestamptz
);
CREATE UNIQUE INDEX execution_groups_key ON execution_groups (tenant, group_key);

-- `held`: a group member waiting for a free place in its group; claims skip it. No
-- foreign key on group_id: an RI trigger would queue an event for every insert of the
-- hot path, grouped or not; members and their group are written in one transaction.
ALTER TABLE executions
    ADD COLUMN group_id uuid,
    ADD COLUMN held boolean NOT NULL DEFAULT false,
    ADD COLUMN retention_ms bigint CHECK (retention_ms > 0),
    ADD COLUMN from_result uuid;

-- Members of a group in release order.
CREATE INDEX executions_group ON executions (group_id, priority DESC, id)
    WHERE group_id IS NOT NULL;

-- Finished executions with a retention of their own, for the bookkeeper's expiry pass.
CREATE INDEX executions_own_retention ON executions (tier, status, finished_at)
    WHERE retention_ms IS NOT NULL;

-- When a member that held a place ends, the next held member of its group (highest
-- priority, then oldest) takes the place, in the same transaction: the count of
-- unheld members in flight never exceeds the concurrency, whichever process ended the
-- member (a worker, a cancel, the bookkeeper). FOR UPDATE (not SKIP LOCKED): a
-- transaction that ends another member at the same time waits, then takes the next
-- one; if it rolls back, the waiting one takes its place instead, so none is lost.
-- Group cancels lock held members in the same order, so the two cannot deadlock.
CREATE FUNCTION executions_release_group_member() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    released_tier text;
BEGIN
    UPDATE executions SET held = false
    WHERE id = (SELECT id FROM executions
                WHERE group_id = NEW.group_id AND held AND status = 'PENDING'
                ORDER BY priority DESC, id
                LIMIT 1
                FOR UPDATE)
    RETURNING tier INTO released_tier;
    IF released_tier IS NOT NULL THEN
        PERFORM pg_notify('sluice_work', released_tier);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER executions_release_group_member
    AFTER UPDATE OF status ON executions
    FOR EACH ROW
    WHEN (NEW.group_id IS NOT NULL AND NOT OLD.held
          AND OLD.status IN ('PENDING', 'RUNNING')
          AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION executions_release_group_member();
