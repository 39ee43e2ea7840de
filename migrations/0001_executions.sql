-- The queue: one row per execution. See src/execution.rs for the status machine and
-- src/store/ for every statement that reads or writes this table.

CREATE TYPE execution_status AS ENUM
    ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELED', 'EXPIRED');

CREATE TABLE executions (
    id                  uuid PRIMARY KEY,             -- UUIDv7: ordered by creation time
    tenant              text NOT NULL DEFAULT 'default',
    created_by          text NOT NULL DEFAULT 'anonymous',
    tier                text NOT NULL,
    query_id            text NOT NULL,                -- the dedup key (client's or derived)
    query_hash          text NOT NULL,                -- sha256 of sql, tier, format, settings
    sql                 text NOT NULL,
    format              text NOT NULL,
    settings            jsonb NOT NULL DEFAULT '{}',  -- client settings, already validated
    status              execution_status NOT NULL DEFAULT 'PENDING',
    priority            smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    run_after           timestamptz NOT NULL DEFAULT now(),
    attempt             integer NOT NULL DEFAULT 0,   -- bumped by every claim: the lease fence
    max_attempts        integer NOT NULL CHECK (max_attempts >= 1),
    worker_id           text,
    lease_expires_at    timestamptz,
    progress            jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    result              jsonb,
    error               jsonb,
    collapsed_count     integer NOT NULL DEFAULT 0,
    cancel_requested_at timestamptz,
    superseded_by       uuid
);

-- In-flight dedup: at most one PENDING or RUNNING execution per (tenant, query_id).
CREATE UNIQUE INDEX executions_in_flight_key ON executions (tenant, query_id)
    WHERE status IN ('PENDING', 'RUNNING');

-- Claim order: runnable rows only, highest priority first, then oldest (UUIDv7 order).
-- Heartbeat columns (lease_expires_at, progress) stay out of every index so lease
-- renewals are HOT updates.
CREATE INDEX executions_claim ON executions (tier, priority DESC, id)
    WHERE status = 'PENDING';

-- Running rows, for the bookkeeper's reclaim pass (few rows; lease checked on the heap).
CREATE INDEX executions_running ON executions (tier) WHERE status = 'RUNNING';

-- Listing: newest first, optionally by query_id.
CREATE INDEX executions_tenant_id ON executions (tenant, id DESC);
CREATE INDEX executions_tenant_query_id ON executions (tenant, query_id, id DESC);

-- The status machine, enforced for every writer.
CREATE FUNCTION executions_guard_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'PENDING' THEN
            RAISE EXCEPTION 'an execution starts PENDING, not %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status = OLD.status THEN
        RETURN NEW;
    END IF;
    IF (OLD.status, NEW.status) IN (
        ('PENDING', 'RUNNING'), ('PENDING', 'CANCELED'),
        ('RUNNING', 'SUCCEEDED'), ('RUNNING', 'FAILED'), ('RUNNING', 'CANCELED'),
        ('RUNNING', 'PENDING'),
        ('SUCCEEDED', 'EXPIRED'), ('FAILED', 'EXPIRED'), ('CANCELED', 'EXPIRED')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'illegal execution status transition % -> %', OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER executions_guard_status
    BEFORE INSERT OR UPDATE OF status ON executions
    FOR EACH ROW EXECUTE FUNCTION executions_guard_status();
