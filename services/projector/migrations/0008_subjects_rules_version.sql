-- The version of the legal rule table (consent.law.RULES_VERSION) each row's matrix was
-- evaluated with. Rows from before the table existed get '' and so differ from every
-- version: the projector re-evaluates (and republishes, where the answer changed) every row
-- whose version differs from its own, once, when it starts (docs/law.md).
ALTER TABLE projector.subjects ADD COLUMN rules_version text NOT NULL DEFAULT '';
