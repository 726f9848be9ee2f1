-- WireGuard between cells. Each cell makes its own key pair and registers
-- only the public key (base64 of 32 bytes) and the UDP port its device
-- listens on: wireguard_key is '' until it did. wireguard_key_generation
-- is the generation the registered key answers (0: none), wireguard_key_at
-- when it was registered (microseconds since the epoch). key_generation is
-- the generation the controller wants: a rotation bumps it past the
-- registered one, and the cell's agent then makes a new pair and registers
-- it. The foundation's encryption mode is the setting 'encryption' ('off'
-- or 'wireguard'; absent: off).
ALTER TABLE cells ADD COLUMN wireguard_key TEXT NOT NULL DEFAULT '';
ALTER TABLE cells ADD COLUMN wireguard_port INTEGER NOT NULL DEFAULT 0;
ALTER TABLE cells ADD COLUMN wireguard_key_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cells ADD COLUMN wireguard_key_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE cells ADD COLUMN key_generation BIGINT NOT NULL DEFAULT 1;
