package controller

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/trellis-c2c/trellis/internal/store"
)

// msgDatabaseUnavailable is the error of every answer a controller gives
// while its database does not answer.
const msgDatabaseUnavailable = "database unavailable"

// databaseDown reports whether the store's database does not answer now,
// asking it with a short timeout. A handler's 500 is checked with it: a
// failure while the database is down is a 503, which clients take as "try
// another controller, or later", and which promises nothing was changed.
func (s *Server) databaseDown(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	return store.IsUnavailable(s.store.Ping(ctx))
}

// unavailableWriter turns a handler's 500 into a 503 "database unavailable"
// in the shape of the API family of the path (v3's errors list, or the
// networking API's {"error": …}) when the database does not answer, and
// drops the handler's own body of that answer.
type unavailableWriter struct {
	http.ResponseWriter
	r       *http.Request
	down    func(context.Context) bool
	swallow bool
}

func (u *unavailableWriter) WriteHeader(code int) {
	if code != http.StatusInternalServerError || u.swallow || !u.down(u.r.Context()) {
		u.ResponseWriter.WriteHeader(code)
		return
	}
	u.swallow = true
	u.ResponseWriter.Header().Set("Retry-After", "1")
	if strings.HasPrefix(u.r.URL.Path, "/v3/") {
		writeV3Error(u.ResponseWriter, http.StatusServiceUnavailable, msgDatabaseUnavailable)
		return
	}
	writeNetError(u.ResponseWriter, http.StatusServiceUnavailable, msgDatabaseUnavailable)
}

func (u *unavailableWriter) Write(b []byte) (int, error) {
	if u.swallow {
		return len(b), nil
	}
	return u.ResponseWriter.Write(b)
}

// Unwrap gives http.ResponseController the writer underneath.
func (u *unavailableWriter) Unwrap() http.ResponseWriter { return u.ResponseWriter }
