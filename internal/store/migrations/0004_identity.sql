-- Instance identity. The instance CA (its roots, intermediates and keys,
-- serialized by the controller) is the setting 'instance_ca', and its
-- generation — bumped every time it changes, so cells know to renew — the
-- setting 'instance_ca_generation'; the store writes both in one
-- transaction. Per app: whether port 61443 demands a client certificate
-- from the instance CA.
ALTER TABLE apps ADD COLUMN require_client_cert BOOLEAN NOT NULL DEFAULT FALSE;
