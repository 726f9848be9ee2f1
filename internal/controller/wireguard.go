package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/store"
)

// Encryption between cells: the foundation-wide switch, the cells' WireGuard
// public keys (each cell makes its own pair; the private key never leaves
// it) and their rotation, by an admin or on a schedule.

// encryptionKey is the setting holding the encryption mode.
const encryptionKey = "encryption"

// encryptionMode is the mode a stored setting value means: off unless it
// is set to wireguard.
func encryptionMode(v string) string {
	if v == api.EncryptionWireGuard {
		return api.EncryptionWireGuard
	}
	return api.EncryptionOff
}

// ValidEncryption checks an encryption mode given by a user.
func ValidEncryption(mode string) error {
	if mode != api.EncryptionOff && mode != api.EncryptionWireGuard {
		return fmt.Errorf("encryption mode %q: must be %s or %s", mode, api.EncryptionWireGuard, api.EncryptionOff)
	}
	return nil
}

func (s *Server) getEncryption(w http.ResponseWriter, r *http.Request) {
	v, _, err := s.store.Setting(r.Context(), encryptionKey)
	if err != nil {
		s.storeError(w, "read encryption", err)
		return
	}
	writeJSON(w, http.StatusOK, api.EncryptionSetting{Mode: encryptionMode(v)})
}

func (s *Server) setEncryption(w http.ResponseWriter, r *http.Request) {
	var req api.EncryptionSetting
	if !readV3(w, r, &req) {
		return
	}
	if err := ValidEncryption(req.Mode); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, "mode: "+err.Error())
		return
	}
	old, _, err := s.store.Setting(r.Context(), encryptionKey)
	if err != nil {
		s.storeError(w, "read encryption", err)
		return
	}
	if err := s.store.SetSetting(r.Context(), encryptionKey, req.Mode); err != nil {
		s.storeError(w, "set encryption", err)
		return
	}
	user := principalFrom(r.Context()).user()
	switch {
	case encryptionMode(old) == req.Mode:
		s.log.Info("encryption between cells unchanged", "mode", req.Mode, "user", user)
	case req.Mode == api.EncryptionWireGuard:
		s.log.Warn("encryption between cells turned ON (wireguard) for the foundation", "user", user)
	default:
		s.log.Warn("ENCRYPTION BETWEEN CELLS TURNED OFF for the foundation: traffic between cells crosses the underlay in plaintext", "user", user)
	}
	writeJSON(w, http.StatusOK, api.EncryptionSetting{Mode: req.Mode})
}

// registerWireGuardKey records the calling cell's WireGuard public key: the
// cell is the one its client certificate names, so a cell can register no
// other cell's key.
func (s *Server) registerWireGuardKey(w http.ResponseWriter, r *http.Request) {
	c := cellFrom(r.Context())
	var req api.CellKey
	if !readV3(w, r, &req) {
		return
	}
	k := store.CellKey{PublicKey: req.PublicKey, ListenPort: req.ListenPort, Generation: req.Generation}
	if err := k.Validate(); err != nil {
		writeNetError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	err := s.store.RegisterCellKey(r.Context(), c.GUID, k)
	msg := func() string { return strings.TrimPrefix(err.Error(), "register cell key: ") }
	switch {
	case errors.Is(err, store.ErrKeyGeneration), errors.Is(err, store.ErrConflict):
		writeNetError(w, http.StatusConflict, msg())
		return
	case errors.Is(err, store.ErrNotFound):
		writeNetError(w, http.StatusUnauthorized, "this cell was deleted: join again with a new join token")
		return
	case err != nil:
		s.log.Error("register cell key", "cell", c.Name, "err", err)
		writeNetError(w, http.StatusInternalServerError, "database write failed")
		return
	}
	if c.WireGuardKey != req.PublicKey {
		s.log.Info("cell registered a WireGuard key", "cell", c.Name, "generation", req.Generation, "port", req.ListenPort)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) rotateCellKeys(w http.ResponseWriter, r *http.Request) {
	var req api.RotateCellKeysRequest
	if !readV3(w, r, &req) {
		return
	}
	for i, n := range req.Cells {
		if n == "" {
			writeNetError(w, http.StatusUnprocessableEntity, fmt.Sprintf("cells[%d]: empty name", i))
			return
		}
	}
	cells, err := s.store.RotateCellKeys(r.Context(), req.Cells)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeNetError(w, http.StatusNotFound, strings.TrimPrefix(err.Error(), "rotate cell keys: ")+": no key was rotated")
		return
	case err != nil:
		s.log.Error("rotate cell keys", "err", err)
		writeNetError(w, http.StatusInternalServerError, "database write failed")
		return
	}
	out := api.RotateCellKeysResponse{Cells: []api.CellKeyGeneration{}}
	var names []string
	for _, c := range cells {
		out.Cells = append(out.Cells, api.CellKeyGeneration{Name: c.Name, KeyGeneration: c.KeyGeneration})
		names = append(names, c.Name)
	}
	s.log.Info("cell key rotation asked", "cells", names, "user", principalFrom(r.Context()).user())
	writeJSON(w, http.StatusOK, out)
}

// initEncryption gives a new foundation the encryption mode of the
// controller's flag; a foundation that has one keeps it (the flag names
// only a new foundation's).
func initEncryption(ctx context.Context, st *store.Store, mode string, log *slog.Logger) (string, error) {
	if mode == "" {
		mode = api.EncryptionOff
	}
	if err := ValidEncryption(mode); err != nil {
		return "", fmt.Errorf("--encryption: %w", err)
	}
	have, err := st.InitSetting(ctx, encryptionKey, mode)
	if err != nil {
		return "", err
	}
	have = encryptionMode(have)
	if have != mode {
		log.Info("the foundation's encryption mode is kept: --encryption sets a new foundation's (change it with trellis encryption)", "encryption", have, "flag", mode)
	}
	return have, nil
}

// rotateKeysEvery asks every cell whose WireGuard key is older than maxAge
// for a new one, checking every maxAge/10 (at most every minute), until ctx
// is done. Controllers sharing a store may all run it: a rotation pending
// is not asked again.
func rotateKeysEvery(ctx context.Context, st *store.Store, maxAge time.Duration, log *slog.Logger) {
	tick := min(max(maxAge/10, 10*time.Millisecond), time.Minute)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		names, err := st.RotateOldCellKeys(ctx, maxAge)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("scheduled cell key rotation", "err", err)
		case len(names) > 0:
			log.Info("scheduled cell key rotation: asked cells for new keys", "cells", names, "max_age", maxAge)
		}
	}
}
