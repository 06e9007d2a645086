-- An e-mail address is one account per tenant (case-insensitive).
CREATE UNIQUE INDEX users_tenant_email ON portal.users (tenant_id, lower(email));
