-- Issue 13: time limits. `timeout_ms` bounds each run (its worker kills the query and
-- fails it with TIMEOUT; the bookkeeper does if the worker cannot); `start_deadline`
-- bounds the wait for a worker (past it, a PENDING execution FAILS with
-- NOT_STARTED_IN_TIME, so PENDING -> FAILED becomes a legal transition).
ALTER TABLE executions
    ADD COLUMN timeout_ms bigint CHECK (timeout_ms > 0),
    ADD COLUMN start_deadline timestamptz;

DROP TRIGGER executions_guard_status ON executions;
CREATE TRIGGER executions_guard_status
    BEFORE UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status <> NEW.status AND (OLD.status, NEW.status) NOT IN (
        ('PENDING', 'RUNNING'), ('PENDING', 'CANCELED'), ('PENDING', 'FAILED'),
        ('RUNNING', 'SUCCEEDED'), ('RUNNING', 'FAILED'), ('RUNNING', 'CANCELED'),
        ('RUNNING', 'PENDING'),
        ('SUCCEEDED', 'EXPIRED'), ('FAILED', 'EXPIRED'), ('CANCELED', 'EXPIRED')))
    EXECUTE FUNCTION executions_refuse_status();

-- The bookkeeper's passes over the few rows with a deadline.
CREATE INDEX executions_start_deadline ON executions (start_deadline)
    WHERE status = 'PENDING' AND start_deadline IS NOT NULL;
CREATE INDEX executions_run_deadline ON executions (started_at)
    WHERE status = 'RUNNING' AND timeout_ms IS NOT NULL;
