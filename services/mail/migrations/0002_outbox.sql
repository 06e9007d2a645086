-- Mails waiting to be sent, and what became of them (services/mail/outbox.py). The message
-- itself (recipient, subject, bodies, which may hold a portal link) is sealed with the
-- subject's own key: erasure makes a pending mail unreadable, and the worker drops it.
-- A worker claims a mail by moving next_attempt_at past the time a send can take, so a
-- crashed worker's mails come due again (at least once).
CREATE TABLE mail.outbox (
    mail_id          uuid PRIMARY KEY,
    tenant_id        text NOT NULL,
    source           text NOT NULL,
    customer_ref     text NOT NULL,
    kind             text NOT NULL,
    sealed           jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'dropped')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_by       text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    message_id       text
);
