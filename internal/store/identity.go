package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// InstanceCA is the stored instance identity CA: the controller's
// serialization of it, opaque to the store, and its generation, which grows
// by one with every change (cells renew their certificates when it does).
type InstanceCA struct {
	State      string
	Generation int64
}

// The settings that hold the instance CA (see migration 0004).
const (
	instanceCAKey           = "instance_ca"
	instanceCAGenerationKey = "instance_ca_generation"
)

// InstanceCA reads the instance CA; ok is false if none was created yet.
func (s *Store) InstanceCA(ctx context.Context) (ca InstanceCA, ok bool, err error) {
	ca, ok, err = readInstanceCA(ctx, s.r())
	if err != nil {
		return ca, false, fmt.Errorf("read instance CA: %w", err)
	}
	return ca, ok, nil
}

// readInstanceCA reads both settings in one statement, so that it sees
// them as one transaction wrote them.
func readInstanceCA(ctx context.Context, r runner) (InstanceCA, bool, error) {
	rows, err := r.query(ctx, "SELECT key, value FROM settings WHERE key IN ('"+instanceCAKey+"', '"+instanceCAGenerationKey+"')")
	if err != nil {
		return InstanceCA{}, false, err
	}
	defer rows.Close()
	set := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return InstanceCA{}, false, err
		}
		set[k] = v
	}
	if err := rows.Err(); err != nil {
		return InstanceCA{}, false, err
	}
	return instanceCAFrom(set)
}

// instanceCAFrom finds the instance CA in settings read together.
func instanceCAFrom(settings map[string]string) (InstanceCA, bool, error) {
	state, ok1 := settings[instanceCAKey]
	gen, ok2 := settings[instanceCAGenerationKey]
	if ok1 != ok2 {
		return InstanceCA{}, false, errors.New("the CA and its generation are not both stored")
	}
	if !ok1 {
		return InstanceCA{}, false, nil
	}
	ca := InstanceCA{State: state}
	var err error
	if ca.Generation, err = strconv.ParseInt(gen, 10, 64); err != nil {
		return InstanceCA{}, false, fmt.Errorf("generation %q: %w", gen, err)
	}
	return ca, true, nil
}

// CreateInstanceCA stores state as the instance CA, generation 1, unless
// one exists, and returns the stored one: when controllers sharing a
// database start at once, the first to commit wins and all sign with its
// CA. Creating bumps the revision (cells see the CA); finding one does not.
func (s *Store) CreateInstanceCA(ctx context.Context, state string) (InstanceCA, error) {
	err := s.write(ctx, func(r runner) (bool, error) {
		n, err := r.execCount(ctx, "INSERT INTO settings (key, value) VALUES ('"+instanceCAKey+"', ?) ON CONFLICT DO NOTHING", state)
		if err != nil || n == 0 {
			return false, err
		}
		_, err = r.exec(ctx, "INSERT INTO settings (key, value) VALUES ('"+instanceCAGenerationKey+"', '1')")
		return err == nil, err
	})
	if err != nil {
		return InstanceCA{}, fmt.Errorf("create instance CA: %w", err)
	}
	ca, ok, err := s.InstanceCA(ctx)
	if err == nil && !ok {
		err = fmt.Errorf("read instance CA: %w", ErrNotFound)
	}
	return ca, err
}

// UpdateInstanceCA replaces the instance CA with what update makes of the
// current one, and bumps its generation and the revision. It runs in one
// write transaction, which serializes with every other writer: two
// controllers rotating at once take turns, the second updating what the
// first wrote. An error from update changes nothing and is returned
// wrapped; ErrNotFound if there is no CA yet.
func (s *Store) UpdateInstanceCA(ctx context.Context, update func(cur InstanceCA) (string, error)) (InstanceCA, error) {
	var next InstanceCA
	err := s.write(ctx, func(r runner) (bool, error) {
		cur, ok, err := readInstanceCA(ctx, r)
		if err != nil {
			return false, err
		}
		if !ok {
			return false, fmt.Errorf("instance CA: %w", ErrNotFound)
		}
		state, err := update(cur)
		if err != nil {
			return false, err
		}
		next = InstanceCA{State: state, Generation: cur.Generation + 1}
		if _, err := r.exec(ctx, "UPDATE settings SET value = ? WHERE key = '"+instanceCAKey+"'", state); err != nil {
			return false, err
		}
		_, err = r.exec(ctx, "UPDATE settings SET value = ? WHERE key = '"+instanceCAGenerationKey+"'", strconv.FormatInt(next.Generation, 10))
		return err == nil, err
	})
	if err != nil {
		return InstanceCA{}, fmt.Errorf("update instance CA: %w", err)
	}
	return next, nil
}

// SetAppRequireClientCert sets whether an app's automatic TLS (port
// 61443) demands a client certificate, and returns the app. Setting the
// value it has writes nothing. ErrNotFound if the app is missing.
func (s *Store) SetAppRequireClientCert(ctx context.Context, guid string, require bool) (App, error) {
	err := s.write(ctx, func(r runner) (bool, error) {
		var have bool
		if err := r.queryRow(ctx, "SELECT require_client_cert FROM apps WHERE guid = ?", guid).Scan(&have); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return false, fmt.Errorf("app %s: %w", guid, ErrNotFound)
			}
			return false, err
		}
		if have == require {
			return false, nil
		}
		_, err := r.exec(ctx, "UPDATE apps SET require_client_cert = ?, updated_at = ? WHERE guid = ?", require, micros(now()), guid)
		return err == nil, err
	})
	if err != nil {
		return App{}, fmt.Errorf("set require_client_cert: %w", err)
	}
	apps, err := s.Apps(ctx, AppFilter{GUIDs: []string{guid}})
	if err != nil || len(apps) == 0 {
		return App{}, errors.Join(err, fmt.Errorf("set require_client_cert: app %s: %w", guid, ErrNotFound))
	}
	return apps[0], nil
}
