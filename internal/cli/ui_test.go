package cli

import (
	"strings"
	"testing"
)

// TestUIPrintsTheConsoleURL: `trellis ui` prints the console's URL on the
// configured controller, and never the token.
func TestUIPrintsTheConsoleURL(t *testing.T) {
	f := newFakeController(t)
	admin := f.adminJSON(t, t.TempDir())
	got := runCLI(map[string]string{"TRELLIS_CONFIG": admin}, "ui")
	if got.Code != 0 || !strings.HasPrefix(got.Stdout, f.srv.URL+"/ui/\n") {
		t.Errorf("trellis ui = %+v, want the URL %s/ui/ first", got, f.srv.URL)
	}
	if strings.Contains(got.Stdout+got.Stderr, fakeToken) {
		t.Errorf("trellis ui printed the token: %+v", got)
	}
	if got := runCLI(map[string]string{"TRELLIS_CONFIG": admin}, "ui", "extra"); got.Code != 2 {
		t.Errorf("trellis ui extra = %+v, want exit 2", got)
	}
}
