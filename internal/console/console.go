// Package console is the web console the controller serves at /ui/: a
// page of plain ES modules and SVG, embedded in the binary, that draws the
// foundation's apps, policies and live flows from the controller's API
// (with the token the user gives it, kept in the page's session storage).
// Nothing is fetched from elsewhere at run time.
package console

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Path is where the controller serves the console.
const Path = "/ui/"

// CSP is the console's Content-Security-Policy: its own scripts and styles
// only, no inline script or style, no plugins, never framed, no <base>.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

// Handler serves the console's files under Path with the CSP, and refuses
// framing and sniffing.
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree always has static/
	}
	files := http.StripPrefix(Path, http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}

// URL is the console's address on the controller at apiURL.
func URL(apiURL string) string {
	return strings.TrimRight(apiURL, "/") + Path
}
