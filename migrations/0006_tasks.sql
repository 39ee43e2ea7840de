-- Saved reports (issue 12): the task an execution runs, if it was submitted as one.
ALTER TABLE executions ADD COLUMN task text;

-- Listing a tenant's executions of one task, newest first.
CREATE INDEX executions_tenant_task ON executions (tenant, task, id DESC) WHERE task IS NOT NULL;
