-- Forgetting old failures (a day after the last one) without reading the whole table.
CREATE INDEX login_failures_last_failed ON portal.login_failures (last_failed_at);
