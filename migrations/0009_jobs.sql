-- Issue 13: multi-statement jobs. `job` holds the steps (statements and fallbacks) and
-- what happened to each; the worker rewrites it, fenced, as each step starts and ends.
ALTER TABLE executions ADD COLUMN job jsonb;
