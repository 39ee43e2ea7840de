-- Issue 14: caps on the stored result. A worker stores at most `row_limit` rows and
-- `byte_limit` bytes (whole rows, line formats only), stops the query there and marks
-- the result `truncated` (in `result`, a jsonb).
ALTER TABLE executions
    ADD COLUMN row_limit bigint CHECK (row_limit > 0),
    ADD COLUMN byte_limit bigint CHECK (byte_limit > 0);
