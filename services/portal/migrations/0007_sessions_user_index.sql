-- Revoke every session of a user (password reset, account disabled).
CREATE INDEX sessions_user ON portal.sessions (user_id);
