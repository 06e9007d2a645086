-- Least-privilege database roles for the consent ledger (docs/deploy.md, "Database roles").
--
--   consent_owner     owns the schemas and tables: `consent-ledger migrate` runs as this role,
--                     nothing else does. No superuser, no CREATEROLE, no CREATEDB.
--   consent_app       every long-running service and the nightly jobs (serve, relay, projector,
--                     portal, import, retention). Reads and writes the read models, but the
--                     ledger itself is append-only for it: INSERT and SELECT on ledger.events,
--                     never UPDATE, DELETE or TRUNCATE, so a bug or an injected statement in the
--                     application cannot rewrite history (the hash chain would show it, this
--                     prevents it).
--   consent_readonly  auditors, reporting, `consent-ledger verify`: SELECT only, and not on the
--                     tables that hold secrets (wrapped subject keys, API key and session hashes).
--
-- Run it with psql as a superuser (or a CREATEROLE role that owns the database), connected to
-- the ledger's database: once BEFORE the first `consent-ledger migrate` (it creates the roles and
-- the database grants) and AGAIN AFTER EVERY `consent-ledger migrate` (it grants on the tables that
-- migration created; new tables get no privileges until then). It is idempotent.
--
--   psql -X -v ON_ERROR_STOP=1 -d consent_ledger \
--        -v app_password_file=/run/secrets/db_app_password \
--        -v owner_password_file=/run/secrets/db_owner_password \
--        -f deploy/postgres-roles.sql
--
-- Variables, all optional: owner_role, app_role, readonly_role (role names, defaults above);
-- owner_password_file, app_password_file, readonly_password_file (a file holding that role's
-- password: set when given, otherwise left as it is; the file's trailing newline is ignored).

\set ON_ERROR_STOP on
\set QUIET on

\if :{?owner_role}
\else
  \set owner_role consent_owner
\endif
\if :{?app_role}
\else
  \set app_role consent_app
\endif
\if :{?readonly_role}
\else
  \set readonly_role consent_readonly
\endif

-- 1. The roles (created when missing; their attributes enforced on every run). -----------------

SELECT format('CREATE ROLE %I', r) FROM unnest(ARRAY[:'owner_role', :'app_role', :'readonly_role']) AS r
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) \gexec

SELECT format('ALTER ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', r)
  FROM unnest(ARRAY[:'owner_role', :'app_role', :'readonly_role']) AS r \gexec

-- A transaction left open holds a partition's head row lock and stops its appends: end it.
ALTER ROLE :"app_role" SET idle_in_transaction_session_timeout = '60s';
ALTER ROLE :"readonly_role" SET default_transaction_read_only = on;

-- Passwords: read from files so they never appear on a command line. As a superuser, keep this
-- session's statements out of the server log whatever log_statement says.
SELECT rolsuper AS is_superuser FROM pg_roles WHERE rolname = current_user \gset
\if :is_superuser
  SET log_statement = 'none';
  SET log_min_duration_statement = -1;
\endif
\if :{?owner_password_file}
  \set owner_password `cat :'owner_password_file'`
  ALTER ROLE :"owner_role" PASSWORD :'owner_password';
  \unset owner_password
\endif
\if :{?app_password_file}
  \set app_password `cat :'app_password_file'`
  ALTER ROLE :"app_role" PASSWORD :'app_password';
  \unset app_password
\endif
\if :{?readonly_password_file}
  \set readonly_password `cat :'readonly_password_file'`
  ALTER ROLE :"readonly_role" PASSWORD :'readonly_password';
  \unset readonly_password
\endif

-- 2. The database: only these roles connect; only the owner creates schemas. --------------------

SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO %I', current_database(), :'owner_role') \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I', current_database(), :'app_role', :'readonly_role') \gexec
SELECT 'REVOKE CREATE ON SCHEMA public FROM PUBLIC' WHERE to_regnamespace('public') IS NOT NULL \gexec

-- The migrations must have been applied by the owner role: refuse to go on if the ledger's
-- schema belongs to someone else (e.g. it was migrated as a superuser): grants would miss it.
SELECT format('DO %L', format('BEGIN RAISE EXCEPTION USING MESSAGE = %L; END',
       format('schema ledger is owned by %s, not %s: run `ALTER SCHEMA ... OWNER TO` / `ALTER TABLE ... OWNER TO` '
              'for every schema and table, or migrate as %s from the start', pg_get_userbyid(n.nspowner),
              :'owner_role', :'owner_role')))
  FROM pg_namespace n WHERE n.nspname = 'ledger' AND pg_get_userbyid(n.nspowner) <> :'owner_role' \gexec

-- 3. Everything the owner owns: the app reads and writes rows, the read-only role reads. --------
--    Nobody but the owner gets TRUNCATE, REFERENCES, TRIGGER or DDL.

SELECT format('GRANT USAGE ON SCHEMA %I TO %I, %I', n.nspname, :'app_role', :'readonly_role'),
       format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', n.nspname, :'app_role'),
       format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', n.nspname, :'app_role'),
       format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', n.nspname, :'readonly_role')
  FROM pg_namespace n
 WHERE pg_get_userbyid(n.nspowner) = :'owner_role' AND n.nspname NOT LIKE 'pg\_%' \gexec

-- Tables the owner creates later in the read-model schemas get the same grants at once: a
-- `consent-ledger projector rebuild` (run as the owner) swaps in new tables while the
-- projector, as the app role, keeps writing. Not in the ledger schema: a new ledger table
-- waits for its own line in step 4.
SELECT format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I',
              :'owner_role', n.nspname, :'app_role'),
       format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I',
              :'owner_role', n.nspname, :'app_role'),
       format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %I GRANT SELECT ON TABLES TO %I',
              :'owner_role', n.nspname, :'readonly_role')
  FROM pg_namespace n
 WHERE pg_get_userbyid(n.nspowner) = :'owner_role' AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'ledger' \gexec

-- 4. The ledger and the audit trail: narrower than step 3, table by table. ----------------------
--    Every table of the ledger schema is listed here (tests/test_deploy_roles.py checks it).

SELECT format('REVOKE ALL ON TABLE %s FROM %I', t, :'app_role'),
       format('GRANT %s ON TABLE %s TO %I', privileges, t, :'app_role')
  FROM (VALUES
    -- The log: appended to, read; never changed or removed.
    ('ledger.events',            'SELECT, INSERT'),
    -- One head row per log partition: locked (SELECT ... FOR UPDATE needs UPDATE) and moved on
    -- by each append to that partition.
    ('ledger.partitions',        'SELECT, UPDATE'),
    -- The head of the log before partitioning: frozen, read by `verify` (migration 0015).
    ('ledger.log_origin',        'SELECT'),
    -- Which migrations ran: services check it at start-up, only `migrate` (the owner) writes it.
    ('ledger.schema_migrations', 'SELECT'),
    -- First answers of idempotent requests: written once.
    ('ledger.idempotency',       'SELECT, INSERT'),
    -- Per-subject data keys: made on first use, deleted to erase (crypto-shredding); a wrapped
    -- key is never rewritten by the application.
    ('ledger.subject_keys',      'SELECT, INSERT, DELETE'),
    -- Contact directory and blind search index (services/ledger/directory.py): rows replaced
    -- as newer contact data arrives, removed with the subject key (ON DELETE CASCADE) or by a
    -- reindex; the cursor moves on.
    ('ledger.subject_directory', 'SELECT, INSERT, UPDATE, DELETE'),
    ('ledger.subject_search',    'SELECT, INSERT, DELETE'),
    ('ledger.directory_cursor',  'SELECT, INSERT, UPDATE'),
    -- API keys: issued and revoked (revoked_at), never deleted (the audit trail names key ids).
    ('ledger.api_keys',          'SELECT, INSERT, UPDATE'),
    -- Positions of the relay and other followers.
    ('ledger.checkpoints',       'SELECT, INSERT, UPDATE'),
    -- What remains of an erased subject that objected: written once, kept.
    ('audit.suppressions',       'SELECT, INSERT')
  ) AS v(t, privileges)
 WHERE to_regclass(t) IS NOT NULL \gexec

-- Secrets, even hashed or wrapped, are not for readers.
SELECT format('REVOKE ALL ON TABLE %s FROM %I', t, :'readonly_role')
  FROM unnest(ARRAY['ledger.subject_keys', 'ledger.api_keys', 'ledger.idempotency',
                    'ledger.subject_directory', 'ledger.subject_search',
                    'portal.links', 'portal.users', 'portal.sessions', 'mail.outbox', 'mail.addresses']) AS t
 WHERE to_regclass(t) IS NOT NULL \gexec

\echo postgres-roles.sql: roles :owner_role, :app_role, :readonly_role are in place
