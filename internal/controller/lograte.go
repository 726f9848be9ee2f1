package controller

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Log lines anyone on the network can cause (a scanner's TLS handshakes, a
// guessed token) are rate-limited, so that they cannot flood the log or
// bury what matters: at most logBurst lines per logWindow for each kind,
// then one line saying how many were suppressed.
const (
	logBurst  = 10
	logWindow = 10 * time.Second
)

// logLimiter passes at most burst lines per window to a logger and, at the
// end of a window in which it suppressed some, logs how many.
type logLimiter struct {
	log    *slog.Logger
	level  slog.Level
	what   string // names the suppressed lines in the summary
	burst  int
	window time.Duration

	mu         sync.Mutex
	start      time.Time // of the current window
	passed     int       // lines passed in the current window
	suppressed int       // lines suppressed in the current window
}

func newLogLimiter(log *slog.Logger, level slog.Level, what string) *logLimiter {
	return &logLimiter{log: log, level: level, what: what, burst: logBurst, window: logWindow}
}

// Log logs msg with args unless the window's burst is spent.
func (l *logLimiter) Log(msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.start) >= l.window && l.suppressed == 0 {
		l.start, l.passed = now, 0
	}
	if l.passed >= l.burst {
		if l.suppressed == 0 {
			// The first suppressed line of a window schedules its summary,
			// which also opens the next window.
			time.AfterFunc(l.window-now.Sub(l.start), l.summarize)
		}
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.passed++
	l.mu.Unlock()
	l.log.Log(context.Background(), l.level, msg, args...)
}

// summarize ends a window in which lines were suppressed.
func (l *logLimiter) summarize() {
	l.mu.Lock()
	n := l.suppressed
	l.start, l.passed, l.suppressed = time.Now(), 0, 0
	l.mu.Unlock()
	l.log.Log(context.Background(), l.level, "suppressed similar log lines", "what", l.what, "count", n, "within", l.window)
}

// Write makes a logLimiter the writer of a log.Logger, such as an
// http.Server's ErrorLog: each write is one line.
func (l *logLimiter) Write(p []byte) (int, error) {
	l.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// serverErrorLog is the ErrorLog of the controller's http.Server: its
// lines (mostly TLS handshake errors from scanners and plaintext clients)
// go to log as warnings, rate-limited.
func serverErrorLog(l *slog.Logger) *log.Logger {
	return log.New(newLogLimiter(l, slog.LevelWarn, "http server errors"), "", 0)
}

// logAuthFailure logs a refused credential, rate-limited: who sent it (the
// remote address) and why it was refused, never the credential itself.
func (s *Server) logAuthFailure(r *http.Request, reason error) {
	s.authFailures.Log("authentication failed", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", reason.Error())
}
