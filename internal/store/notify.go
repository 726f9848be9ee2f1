package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the PostgreSQL channel every write notifies on commit,
// so that the watchers of every controller sharing the database wake at
// once instead of at their next poll.
const notifyChannel = "trellis_revision"

// wake closes the current change channel (waking WaitRevision) and makes
// a new one.
func (s *Store) wake() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// listen keeps a connection LISTENing on notifyChannel until ctx ends,
// waking watchers on every notification; it reconnects after failures
// and then wakes the watchers, as notifications of the gap were lost
// (polling covers the gap too).
func (s *Store) listen(ctx context.Context, url string) {
	for ctx.Err() == nil {
		conn, err := pgx.Connect(ctx, url)
		if err == nil {
			_, err = conn.Exec(ctx, "LISTEN "+notifyChannel)
			if err == nil {
				// Notifications sent while not listening are lost:
				// wake the watchers to look at the revision now.
				s.wake()
			}
			for err == nil {
				_, err = conn.WaitForNotification(ctx)
				if err == nil {
					s.wake()
				}
			}
			conn.Close(context.Background())
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
