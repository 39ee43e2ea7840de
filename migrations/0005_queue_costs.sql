-- What a busy queue costs Postgres, per execution. Behaviour is unchanged; see
-- `sluice bench` for the figures.

-- The status machine, checked by the triggers' WHEN clauses: they are evaluated without
-- calling a function, so the PL/pgSQL function runs only to raise on an illegal
-- transition (or to erase parameters), instead of on every insert, claim and completion
-- (a few tens of microseconds each, three times per execution).
DROP TRIGGER executions_guard_status ON executions;

CREATE FUNCTION executions_refuse_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        RAISE EXCEPTION 'an execution starts PENDING, not %', NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RAISE EXCEPTION 'illegal execution status transition % -> %', OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER executions_guard_insert
    BEFORE INSERT ON executions
    FOR EACH ROW WHEN (NEW.status <> 'PENDING')
    EXECUTE FUNCTION executions_refuse_status();

CREATE TRIGGER executions_guard_status
    BEFORE UPDATE OF status ON executions
    FOR EACH ROW WHEN (OLD.status <> NEW.status AND (OLD.status, NEW.status) NOT IN (
        ('PENDING', 'RUNNING'), ('PENDING', 'CANCELED'),
        ('RUNNING', 'SUCCEEDED'), ('RUNNING', 'FAILED'), ('RUNNING', 'CANCELED'),
        ('RUNNING', 'PENDING'),
        ('SUCCEEDED', 'EXPIRED'), ('FAILED', 'EXPIRED'), ('CANCELED', 'EXPIRED')))
    EXECUTE FUNCTION executions_refuse_status();

-- Query parameters never outlive their execution: erased as it finishes.
CREATE FUNCTION executions_erase_parameters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.parameters := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER executions_erase_parameters
    BEFORE UPDATE ON executions
    FOR EACH ROW WHEN (NEW.parameters IS NOT NULL
        AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED', 'EXPIRED'))
    EXECUTE FUNCTION executions_erase_parameters();

DROP FUNCTION executions_guard_status();

-- Every execution passes through the partial indexes of PENDING and RUNNING rows and
-- leaves a dead entry in each; claims walk past those until a vacuum removes them. The
-- defaults (a vacuum once a fifth of the table is dead) let a busy day's entries pile
-- up, so vacuum this table after 2 % of it (at least 1,000 rows) changed, without the
-- cost-based pauses.
ALTER TABLE executions SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
