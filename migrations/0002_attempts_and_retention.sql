-- Error history per attempt, and the indexes of the bookkeeper's expiry and purge passes.

-- One entry per attempt that did not succeed: {attempt, worker_id, at, error}.
ALTER TABLE executions ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]';

-- Expiry and purge walk finished rows of one tier and status, oldest first.
CREATE INDEX executions_finished ON executions (tier, status, finished_at)
    WHERE status IN ('SUCCEEDED', 'FAILED', 'CANCELED', 'EXPIRED');
