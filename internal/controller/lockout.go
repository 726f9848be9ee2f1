package controller

import (
	"sync"
	"time"
)

// UAA's lockout policy: after lockoutFailures wrong passwords for a user
// name within lockoutWindow, the name is locked for lockoutWindow (right
// passwords too are refused). It is kept in memory, per controller: with
// n controllers an attacker gets n times the tries, still a handful per
// window instead of thousands.
const (
	lockoutFailures = 5
	lockoutWindow   = 5 * time.Minute
	// maxLockoutNames bounds the memory a flood of made-up names takes:
	// past it, the oldest records go first.
	maxLockoutNames = 10000
)

// lockout counts recent login failures by user name.
type lockout struct {
	mu    sync.Mutex
	names map[string][]time.Time // failure times, oldest first, within the window
}

// locked reports whether name is locked at now.
func (l *lockout) locked(name string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recent(name, now)) >= lockoutFailures
}

// fail records a failure of name at now.
func (l *lockout) fail(name string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.names == nil {
		l.names = map[string][]time.Time{}
	}
	if _, ok := l.names[name]; !ok && len(l.names) >= maxLockoutNames {
		l.prune(now)
	}
	l.names[name] = append(l.recent(name, now), now)
}

// succeed forgets name's failures.
func (l *lockout) succeed(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.names, name)
}

// recent returns name's failures within the window before now.
func (l *lockout) recent(name string, now time.Time) []time.Time {
	ts := l.names[name]
	i := 0
	for i < len(ts) && now.Sub(ts[i]) >= lockoutWindow {
		i++
	}
	return ts[i:]
}

// prune drops every name without a failure in the window, and if that is
// not enough, the name with the oldest last failure.
func (l *lockout) prune(now time.Time) {
	oldest, at, found := "", now, false
	for n, ts := range l.names {
		last := ts[len(ts)-1]
		if now.Sub(last) >= lockoutWindow {
			delete(l.names, n)
			continue
		}
		if !found || last.Before(at) {
			oldest, at, found = n, last, true
		}
	}
	if found && len(l.names) >= maxLockoutNames {
		delete(l.names, oldest)
	}
}
