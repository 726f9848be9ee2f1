package engine

import (
	"github.com/trellis-c2c/trellis/internal/wireguard"
	"time"
)

// After a change that starts sessions anew — the device's key replaced, a
// peer added or given a new key — the two sides of a session may for a
// moment disagree on keys (each cell applies the change when its desired
// state says so). A handshake sent in that moment fails, and WireGuard
// retries it only after 5 s (REKEY_TIMEOUT). kickAfter shortens that: for
// a few seconds after the change, a peer with no handshake since is made
// anew, which lets its next packet send a handshake at once.

// kickAt are the times after a change when peers are checked.
var kickAt = []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, 1 * time.Second,
	1500 * time.Millisecond, 2 * time.Second, 3 * time.Second, 4 * time.Second}

// kicker is what kickAfter needs of an engine.
type kicker interface {
	// lastHandshakes reports each peer's last completed handshake.
	lastHandshakes() (map[wireguard.Key]time.Time, bool)
	// renew removes and adds the peer again with its settings, if it is
	// still a peer and has had no handshake since.
	renew(k wireguard.Key, since time.Time)
}

// kickAfter watches the peers keys (nil: all) from since on; see above.
func kickAfter(e kicker, since time.Time, keys map[wireguard.Key]bool) {
	go func() {
		for _, d := range kickAt {
			time.Sleep(time.Until(since.Add(d)))
			hs, alive := e.lastHandshakes()
			if !alive {
				return
			}
			pending := 0
			for k, t := range hs {
				if keys != nil && !keys[k] {
					continue
				}
				if t.Before(since) {
					e.renew(k, since)
					pending++
				}
			}
			if pending == 0 {
				return
			}
		}
	}()
}
