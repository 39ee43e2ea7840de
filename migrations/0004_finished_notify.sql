-- Long polls (`?wait=N` on GET and POST /v1/executions) return as soon as an execution
-- ends. Every path that ends one (its worker, a cancel of a PENDING row, the bookkeeper,
-- a supersede) is an UPDATE of status, so one trigger tells every api process, at commit.
CREATE FUNCTION executions_notify_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_finished', NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER executions_notify_finished
    AFTER UPDATE OF status ON executions
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION executions_notify_finished();
