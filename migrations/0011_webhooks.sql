-- Issue 14: completion webhooks. An execution with a `callback_url` gets a delivery row
-- in the same transaction as its end (a trigger), so a delivery survives any restart;
-- the bookkeeper sends it, at least once, retrying with backoff (see `store::webhooks`).
ALTER TABLE executions ADD COLUMN callback_url text;

CREATE TABLE webhook_deliveries (
    execution_id uuid PRIMARY KEY REFERENCES executions (id) ON DELETE CASCADE,
    url text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- [{at, status?, error?}], oldest first
    attempts jsonb NOT NULL DEFAULT '[]',
    delivered_at timestamptz,
    given_up_at timestamptz
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;

CREATE FUNCTION executions_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (execution_id, url) VALUES (NEW.id, NEW.callback_url)
        ON CONFLICT (execution_id) DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER executions_webhook
    AFTER UPDATE OF status ON executions
    FOR EACH ROW WHEN (NEW.callback_url IS NOT NULL AND OLD.status <> NEW.status
                       AND NEW.status IN ('SUCCEEDED', 'FAILED', 'CANCELED'))
    EXECUTE FUNCTION executions_webhook();
