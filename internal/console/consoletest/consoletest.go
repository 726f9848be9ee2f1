// Package consoletest drives the web console in a real browser for tests:
// Debian's chromium, headless, through chromedp, with a fresh profile. It
// records what the page writes to its console (errors and uncaught
// exceptions fail the tests that ask), every JavaScript dialog (and
// dismisses it), and saves screenshots as test artifacts.
package consoletest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
)

// DefaultChromium is where Debian's chromium package installs the browser;
// $TRELLIS_CHROMIUM overrides it.
const DefaultChromium = "/usr/bin/chromium"

// Browser is one headless browser with one tab, for one test.
type Browser struct {
	// Ctx is the tab's chromedp context.
	Ctx context.Context
	t   testing.TB
	dir string
	n   int

	mu       sync.Mutex
	messages []chromedp.ConsoleMessage
	dialogs  []string
}

// Chromium is the browser to run: $TRELLIS_CHROMIUM, else DefaultChromium.
// Without one the test is skipped, except under CI=true, where it fails.
func Chromium(t testing.TB) string {
	t.Helper()
	exe := os.Getenv("TRELLIS_CHROMIUM")
	if exe == "" {
		exe = DefaultChromium
	}
	if _, err := os.Stat(exe); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no browser for the console tests: %v (install Debian's chromium, or set TRELLIS_CHROMIUM)", err)
		}
		t.Skipf("no browser for the console tests: %v (apt-get install chromium, or set TRELLIS_CHROMIUM)", err)
	}
	return exe
}

// New starts the browser (headless, no sandbox, no GPU, no background
// networking, component updates, sync or QUIC, a profile in a temporary
// directory; certificate errors ignored, since the controllers of the
// tests have certificates of their own CA) and stops it when the test ends.
func New(t testing.TB) *Browser {
	t.Helper()
	exe := Chromium(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.IgnoreCertErrors,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("mute-audio", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 900),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	b := &Browser{Ctx: ctx, t: t, dir: artifacts(t)}
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	msgs := chromedp.Console(ctx)
	go func() {
		for m, err := range msgs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.messages = append(b.messages, m)
			b.mu.Unlock()
		}
	}()
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	go func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.dialogs = append(b.dialogs, string(ev.Type)+": "+ev.Message)
			b.mu.Unlock()
			chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	}()
	return b
}

// artifacts is the directory for the test's screenshots:
// $TRELLIS_ARTIFACTS/TEST, else a temporary directory.
func artifacts(t testing.TB) string {
	base := os.Getenv("TRELLIS_ARTIFACTS")
	if base == "" {
		return t.TempDir()
	}
	dir := filepath.Join(base, regexp.MustCompile(`[^A-Za-z0-9_.-]+`).ReplaceAllString(t.Name(), "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("artifacts: %v", err)
	}
	return dir
}

// Dir is where the screenshots go.
func (b *Browser) Dir() string { return b.dir }

// Do runs actions in the tab; an error fails the test.
func (b *Browser) Do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// Eval evaluates the JavaScript expression js in the page (awaiting a
// promise) and decodes its value; an error fails the test.
func Eval[T any](b *Browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// WaitFor polls the JavaScript condition js until it is true, and returns
// how long that took; after timeout it fails the test.
func (b *Browser) WaitFor(what, js string, timeout time.Duration) time.Duration {
	b.t.Helper()
	start := time.Now()
	for {
		// An error (the page navigating, say) is not yet.
		ctx, cancel := context.WithTimeout(b.Ctx, 10*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+js+")", chromedp.EvalAwaitPromise))
		cancel()
		if err == nil && ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			b.Shot("timeout")
			b.t.Fatalf("waited %v for %s (%s): %s", timeout, what, js, b.Problems())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Key presses keys (chromedp/kb names: kb.Tab, kb.Enter, ...) in the
// focused element.
func (b *Browser) Key(keys string) {
	b.t.Helper()
	b.Do("press "+keys, chromedp.KeyEvent(keys))
}

// Tab presses Tab.
func (b *Browser) Tab() { b.Key(kb.Tab) }

// Enter presses Enter.
func (b *Browser) Enter() { b.Key(kb.Enter) }

// Shot saves a screenshot of the page as NN-name.png in Dir and returns its path.
func (b *Browser) Shot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return ""
	}
	b.n++
	path := filepath.Join(b.dir, fmt.Sprintf("%02d-%s.png", b.n, name))
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
	}
	return path
}

// Dialogs are the JavaScript dialogs the page opened (all dismissed).
func (b *Browser) Dialogs() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.dialogs...)
}

// Errors are the console errors and uncaught exceptions of the page so
// far, as the DevTools console shows them.
func (b *Browser) Errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, m := range b.messages {
		if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
			out = append(out, fmt.Sprintf("%s %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text))
		}
	}
	return out
}

// Problems describes the errors and dialogs so far, for a failure message.
func (b *Browser) Problems() string {
	return fmt.Sprintf("console errors %q, dialogs %q", b.Errors(), b.Dialogs())
}

// CheckClean fails the test if the page wrote an error or an exception to
// its console or opened a dialog.
func (b *Browser) CheckClean() {
	b.t.Helper()
	if len(b.Errors()) > 0 || len(b.Dialogs()) > 0 {
		b.t.Errorf("the page was not clean: %s", b.Problems())
	}
}
