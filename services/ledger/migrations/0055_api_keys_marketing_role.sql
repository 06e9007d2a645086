-- API keys of role "marketing": the mailing export for a mailing house (issue 15).
ALTER TABLE ledger.api_keys DROP CONSTRAINT api_keys_role_check,
    ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('operator', 'admin', 'staff', 'auditor', 'sender', 'importer', 'marketing'));
