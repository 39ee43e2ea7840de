-- Tenancy: fair claims across tenants, per-tenant running caps, quota keys, and query
-- parameters that never outlive their execution.

-- Query parameters (secrets): sent to ClickHouse as param_<name>, never returned by the
-- API, and erased by the status trigger below as soon as the execution finishes.
ALTER TABLE executions ADD COLUMN parameters jsonb;
-- ClickHouse quota key of the submitting principal.
ALTER TABLE executions ADD COLUMN quota_key text;
-- Most executions of this row's tenant that may run at once on its tier (NULL: no cap).
ALTER TABLE executions ADD COLUMN max_running integer CHECK (max_running >= 1);

-- Claims walk the tenants of a tier and take each one's head: highest priority, oldest.
DROP INDEX executions_claim;
CREATE INDEX executions_claim ON executions (tier, tenant, priority DESC, id)
    WHERE status = 'PENDING';

-- Running rows by tenant, for running caps and fairness.
DROP INDEX executions_running;
CREATE INDEX executions_running ON executions (tier, tenant) WHERE status = 'RUNNING';

-- The status machine, now also erasing parameters when an execution finishes.
CREATE OR REPLACE FUNCTION executions_guard_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'PENDING' THEN
            RAISE EXCEPTION 'an execution starts PENDING, not %', NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED', 'EXPIRED') THEN
        NEW.parameters := NULL;
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
