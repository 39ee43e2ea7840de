-- Issue 14: estimated durations from past runs of the same statement (per tenant), and
-- reuse (`max_age`) finding the latest success of a statement without a scan.
CREATE INDEX executions_succeeded_hash ON executions (tenant, query_hash, finished_at DESC)
    WHERE status = 'SUCCEEDED';
