package proxy

import (
	"math"
	"sync/atomic"
	"time"
)

// idleTimer calls fire when no byte moved for its timeout. The copy loops
// only store a timestamp; the timer re-arms itself for the time left.
type idleTimer struct {
	timeout time.Duration
	last    atomic.Int64 // unix nanoseconds of the last activity
	t       *time.Timer
}

func newIdleTimer(timeout time.Duration, fire func()) *idleTimer {
	it := &idleTimer{timeout: timeout}
	it.touch()
	var check func()
	check = func() {
		left := it.timeout - time.Duration(time.Now().UnixNano()-it.last.Load())
		if left <= 0 {
			fire()
			return
		}
		it.t.Reset(left)
	}
	// Armed once it.t is set: check may run at once.
	it.t = time.AfterFunc(math.MaxInt64, check)
	it.t.Reset(timeout)
	return it
}

// touch records activity; a nil timer ignores it.
func (it *idleTimer) touch() {
	if it != nil {
		it.last.Store(time.Now().UnixNano())
	}
}

func (it *idleTimer) stop() { it.t.Stop() }
