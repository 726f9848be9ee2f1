package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Flow is one logged connection attempt.
type Flow struct {
	ID                  int64
	At                  time.Time
	CellGUID            string
	Verdict             string // "allowed" or "denied"
	Protocol            string
	SrcIP, DstIP        string
	SrcPort, DstPort    int
	SrcApp, SrcInstance string // GUIDs; "" when unknown
	DstApp, DstInstance string
	Reason              string
}

// FlowFilter selects flows: AppGUIDs matches source or destination; After
// keeps flows with a greater ID (for following); Verdict filters when set.
type FlowFilter struct {
	AppGUIDs []string
	Verdict  string
	After    int64
	Limit    int // default 1000
}

// MaxFlows is how many flows the store keeps; older ones are dropped.
var MaxFlows int64 = 100000

// AddFlows records flows without bumping the revision, and drops the oldest
// beyond MaxFlows.
func (s *Store) AddFlows(ctx context.Context, fs []Flow) error {
	if len(fs) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	r := s.tx(tx)
	st, err := r.prepare(ctx, `INSERT INTO flows (at, cell_guid, verdict, protocol, src_ip, src_port, dst_ip, dst_port, src_app, src_instance, dst_app, dst_instance, reason)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, f := range fs {
		if _, err := st.ExecContext(ctx, micros(f.At), f.CellGUID, f.Verdict, f.Protocol, f.SrcIP, f.SrcPort, f.DstIP, f.DstPort,
			f.SrcApp, f.SrcInstance, f.DstApp, f.DstInstance, f.Reason); err != nil {
			return fmt.Errorf("add flows: %w", err)
		}
	}
	var maxID int64
	if err := r.queryRow(ctx, "SELECT COALESCE(MAX(id), 0) FROM flows").Scan(&maxID); err != nil {
		return err
	}
	if maxID > MaxFlows {
		if _, err := r.exec(ctx, "DELETE FROM flows WHERE id <= ?", maxID-MaxFlows); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.mu.Lock()
	close(s.flowsAdded)
	s.flowsAdded = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// Flows lists flows matching f, oldest first.
func (s *Store) Flows(ctx context.Context, f FlowFilter) ([]Flow, error) {
	w := where{r: s.r()}
	w.add("id > ?", f.After)
	if f.Verdict != "" {
		w.add("verdict = ?", f.Verdict)
	}
	if len(f.AppGUIDs) > 0 {
		c1, a1 := w.r.in("src_app", f.AppGUIDs)
		c2, a2 := w.r.in("dst_app", f.AppGUIDs)
		w.add("("+c1+" OR "+c2+")", a1, a2)
	}
	limit := f.Limit
	if limit <= 0 || limit > 10000 {
		limit = 1000
	}
	// The newest `limit` matches, returned oldest first.
	rows, err := w.r.query(ctx, `SELECT id, at, cell_guid, verdict, protocol, src_ip, src_port, dst_ip, dst_port, src_app, src_instance, dst_app, dst_instance, reason
		FROM flows`+w.String()+fmt.Sprintf(" ORDER BY id DESC LIMIT %d", limit), w.args...)
	if err != nil {
		return nil, fmt.Errorf("list flows: %w", err)
	}
	defer rows.Close()
	var out []Flow
	for rows.Next() {
		var fl Flow
		var at int64
		if err := rows.Scan(&fl.ID, &at, &fl.CellGUID, &fl.Verdict, &fl.Protocol, &fl.SrcIP, &fl.SrcPort, &fl.DstIP, &fl.DstPort,
			&fl.SrcApp, &fl.SrcInstance, &fl.DstApp, &fl.DstInstance, &fl.Reason); err != nil {
			return nil, fmt.Errorf("list flows: %w", err)
		}
		fl.At = fromMicros(at)
		out = append(out, fl)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, rows.Err()
}

// WaitFlows returns when flows were added through this Store or after
// RevisionPoll (another controller may have added some), or when ctx ends.
func (s *Store) WaitFlows(ctx context.Context) {
	s.mu.Lock()
	ch := s.flowsAdded
	s.mu.Unlock()
	t := time.NewTimer(RevisionPoll)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

// Setting reads a foundation-wide setting; ok is false if it was never set.
func (s *Store) Setting(ctx context.Context, key string) (value string, ok bool, err error) {
	err = s.r().queryRow(ctx, "SELECT value FROM settings WHERE key = ?", key).Scan(&value)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return value, err == nil, err
}

// SetSetting changes a foundation-wide setting that is part of the desired
// state (it bumps the revision when the value changes).
func (s *Store) SetSetting(ctx context.Context, key, value string) error {
	return s.write(ctx, func(r runner) (bool, error) {
		var old string
		err := r.queryRow(ctx, "SELECT value FROM settings WHERE key = ?", key).Scan(&old)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = r.exec(ctx, "INSERT INTO settings (key, value) VALUES (?, ?)", key, value)
			return err == nil, err
		case err != nil:
			return false, err
		case old == value:
			return false, nil
		}
		_, err = r.exec(ctx, "UPDATE settings SET value = ? WHERE key = ?", value, key)
		return err == nil, err
	})
}
