package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"time"
)

// WireGuard between cells: each cell registers the public key of a pair it
// made itself (the private key never leaves it), for the key generation the
// controller asked for. A rotation asks for the next generation; the
// cell's agent then makes a new pair and registers it.

// ErrKeyGeneration is the error of registering a key for a generation the
// controller did not ask for (newer than the one wanted) or older than the
// key already registered.
var ErrKeyGeneration = errors.New("key generation conflict")

// CellKey is a cell's WireGuard public key registration.
type CellKey struct {
	PublicKey  string // base64 of 32 bytes
	ListenPort int
	Generation int64
}

// Validate checks k's fields: the key is the base64 of 32 bytes, not all
// zero; the port is 1..65535; the generation is at least 1. The error names
// the field and the problem.
func (k CellKey) Validate() error {
	b, err := base64.StdEncoding.Strict().DecodeString(k.PublicKey)
	switch {
	case k.PublicKey == "":
		return errors.New("public_key: required (the base64 of the cell's 32-byte WireGuard public key)")
	case err != nil:
		return fmt.Errorf("public_key: not standard base64: %v", err)
	case len(b) != 32:
		return fmt.Errorf("public_key: %d bytes: a WireGuard public key is 32", len(b))
	case !slices.ContainsFunc(b, func(c byte) bool { return c != 0 }):
		return errors.New("public_key: all zero: not a key")
	case k.ListenPort < 1 || k.ListenPort > 65535:
		return fmt.Errorf("listen_port: %d: must be 1..65535", k.ListenPort)
	case k.Generation < 1:
		return fmt.Errorf("generation: %d: must be the key_generation of the cell's state (at least 1)", k.Generation)
	}
	return nil
}

// RegisterCellKey records cell's WireGuard public key and port, made for
// generation k.Generation: refused (ErrKeyGeneration) if that generation
// is newer than the one the controller wants or older than the key
// registered. Registering what is registered changes nothing (and does not
// bump the revision).
func (s *Store) RegisterCellKey(ctx context.Context, cell string, k CellKey) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("register cell key: %w", err)
	}
	err := s.write(ctx, func(r runner) (bool, error) {
		var key string
		var port int
		var have, want int64
		err := r.queryRow(ctx, "SELECT wireguard_key, wireguard_port, wireguard_key_generation, key_generation FROM cells WHERE guid = ?", cell).
			Scan(&key, &port, &have, &want)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return false, fmt.Errorf("cell %s: %w", cell, ErrNotFound)
		case err != nil:
			return false, err
		case k.Generation > want:
			return false, fmt.Errorf("%w: generation %d is newer than the key_generation %d the controller wants of this cell", ErrKeyGeneration, k.Generation, want)
		case k.Generation < have:
			return false, fmt.Errorf("%w: generation %d is older than the registered key's generation %d", ErrKeyGeneration, k.Generation, have)
		case key == k.PublicKey && port == k.ListenPort && have == k.Generation:
			return false, nil
		}
		if ok, err := r.exists(ctx, "SELECT 1 FROM cells WHERE wireguard_key = ? AND guid <> ?", k.PublicKey, cell); err != nil || ok {
			return false, errors.Join(err, fmt.Errorf("public_key: another cell registered this key: %w", ErrConflict))
		}
		_, err = r.exec(ctx, "UPDATE cells SET wireguard_key = ?, wireguard_port = ?, wireguard_key_generation = ?, wireguard_key_at = ?, updated_at = ? WHERE guid = ?",
			k.PublicKey, k.ListenPort, k.Generation, micros(now()), micros(now()), cell)
		return err == nil, err
	})
	if err != nil {
		return fmt.Errorf("register cell key: %w", err)
	}
	return nil
}

// RotateCellKeys asks the named cells (every cell if none) for a new key:
// each one's wanted generation becomes one past its registered key's (a
// rotation already asked for and not yet answered is not asked twice). An
// unknown name changes nothing (ErrNotFound). It returns the cells as they
// now are, ordered by name.
func (s *Store) RotateCellKeys(ctx context.Context, names []string) ([]Cell, error) {
	var out []Cell
	err := s.write(ctx, func(r runner) (bool, error) {
		cs, err := cells(ctx, r, CellFilter{Names: names})
		if err != nil {
			return false, err
		}
		for _, n := range names {
			if !slices.ContainsFunc(cs, func(c Cell) bool { return c.Name == n }) {
				return false, fmt.Errorf("cell %q %w", n, ErrNotFound)
			}
		}
		changed := false
		for i, c := range cs {
			next := max(c.KeyGeneration, c.WireGuardKeyGeneration+1)
			if next == c.KeyGeneration {
				continue
			}
			if _, err := r.exec(ctx, "UPDATE cells SET key_generation = ?, updated_at = ? WHERE guid = ?", next, micros(now()), c.GUID); err != nil {
				return false, err
			}
			cs[i].KeyGeneration, changed = next, true
		}
		out = cs
		return changed, nil
	})
	if err != nil {
		return nil, fmt.Errorf("rotate cell keys: %w", err)
	}
	return out, nil
}

// RotateOldCellKeys asks every cell whose registered key is older than
// maxAge for a new one (those with a rotation pending are left as they
// are, so controllers sharing the store ask once), and returns their names.
func (s *Store) RotateOldCellKeys(ctx context.Context, maxAge time.Duration) ([]string, error) {
	var out []string
	err := s.write(ctx, func(r runner) (bool, error) {
		out = nil
		cut := micros(now().Add(-maxAge))
		rows, err := r.query(ctx, "SELECT name FROM cells WHERE wireguard_key <> '' AND wireguard_key_at < ? AND key_generation <= wireguard_key_generation ORDER BY name"+r.bytewise(), cut)
		if err != nil {
			return false, err
		}
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				rows.Close()
				return false, err
			}
			out = append(out, n)
		}
		rows.Close()
		if err := rows.Err(); err != nil || len(out) == 0 {
			return false, err
		}
		_, err = r.exec(ctx, "UPDATE cells SET key_generation = wireguard_key_generation + 1, updated_at = ? WHERE wireguard_key <> '' AND wireguard_key_at < ? AND key_generation <= wireguard_key_generation",
			micros(now()), cut)
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("rotate old cell keys: %w", err)
	}
	return out, nil
}

// InitSetting sets a foundation-wide setting that is not set yet (a new
// foundation's, from a controller flag) and returns the value it has: the
// one already stored, if any, is kept.
func (s *Store) InitSetting(ctx context.Context, key, value string) (string, error) {
	have := value
	err := s.write(ctx, func(r runner) (bool, error) {
		err := r.queryRow(ctx, "SELECT value FROM settings WHERE key = ?", key).Scan(&have)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			have = value
			_, err = r.exec(ctx, "INSERT INTO settings (key, value) VALUES (?, ?)", key, value)
			return err == nil, err
		case err != nil:
			return false, err
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("set %s: %w", key, err)
	}
	return have, nil
}
