-- The worker's query: pending mails whose next attempt is due, oldest first.
CREATE INDEX outbox_due_idx ON mail.outbox (next_attempt_at) WHERE status = 'pending';
