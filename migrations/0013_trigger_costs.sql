-- What a status change costs Postgres. Behaviour is unchanged.
--
-- Postgres compiles the WHEN clause of every trigger a statement fires once per
-- statement: it reads the stored expression back (`stringToNode`), folds its constants
-- and sets it up for the executor. In a backlog drain on ClickHouse 18.16, `perf` put
-- 11 % of Postgres's CPU in the UPDATE triggers (claims and completions are a few rows
-- per statement), most of it in the guard's list of ten (old, new) pairs, stored as
-- 9 KB of nodes; after this migration, 7 %.

-- The guard: one comparison of `old>new` with the legal transitions.
DROP TRIGGER executions_guard_status ON executions;
CREATE TRIGGER executions_guard_status
    BEFORE UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status <> NEW.status
        AND (OLD.status::text || '>' || NEW.status::text) <> ALL ('{
            PENDING>RUNNING, PENDING>CANCELED, PENDING>FAILED,
            RUNNING>SUCCEEDED, RUNNING>FAILED, RUNNING>CANCELED, RUNNING>PENDING,
            SUCCEEDED>EXPIRED, FAILED>EXPIRED, CANCELED>EXPIRED}'::text[]))
    EXECUTE FUNCTION executions_refuse_status();

-- An execution that ends: one trigger instead of three (the long-poll NOTIFY, the
-- group's next member, the webhook), in the order the three fired (by name).
CREATE FUNCTION executions_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released_tier text;
BEGIN
    -- Long polls (`?wait=N`) return as soon as an execution ends, in every api process.
    PERFORM pg_notify('sluice_finished', NEW.id::text);
    -- When a member that held a place ends, the next held member of its group takes
    -- the place, in the same transaction (see 0007_groups_and_policy.sql).
    IF NEW.group_id IS NOT NULL AND NOT OLD.held AND OLD.status IN ('PENDING', 'RUNNING') THEN
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
    END IF;
    -- A completion webhook is queued in the transaction that ends the execution.
    IF NEW.callback_url IS NOT NULL THEN
        INSERT INTO webhook_deliveries (execution_id, url) VALUES (NEW.id, NEW.callback_url)
            ON CONFLICT (execution_id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER executions_notify_finished ON executions;
DROP TRIGGER executions_release_group_member ON executions;
DROP TRIGGER executions_webhook ON executions;
DROP FUNCTION executions_notify_finished();
DROP FUNCTION executions_release_group_member();
DROP FUNCTION executions_webhook();

CREATE TRIGGER executions_finished
    AFTER UPDATE OF status ON executions
    FOR EACH ROW
    WHEN (OLD.status <> NEW.status AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION executions_finished();
