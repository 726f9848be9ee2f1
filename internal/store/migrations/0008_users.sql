-- Users: people who log in with a name and password (the cf CLI's
-- `cf auth`), as Cloud Foundry's UAA users. Only a slow hash of the password
-- is stored (argon2id, in PHC string form, which names its parameters).
-- admin users act everywhere (network.admin); others act in the spaces of
-- user_spaces with their role there (network.write in that space).
-- The JWTs the controller signs for a user stop working when the user is
-- deleted or the password changes (they carry a signature of the hash).
CREATE TABLE users (
	guid          TEXT PRIMARY KEY,
	name          TEXT NOT NULL UNIQUE,
	password_hash TEXT NOT NULL,
	admin         BOOLEAN NOT NULL DEFAULT FALSE,
	created_at    BIGINT NOT NULL,
	updated_at    BIGINT NOT NULL
);

CREATE TABLE user_spaces (
	user_guid  TEXT NOT NULL REFERENCES users (guid) ON DELETE CASCADE,
	space_guid TEXT NOT NULL REFERENCES spaces (guid),
	role       TEXT NOT NULL,
	PRIMARY KEY (user_guid, space_guid)
);
