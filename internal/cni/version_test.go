package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/go-cmp/cmp"
)

// wantVersions are the CNI specification versions the plugin declares.
var wantVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// TestPluginVersion runs the plugin (this test binary, see TestMain) with
// CNI_COMMAND=VERSION twice: through libcni, as a runtime asks before it
// picks a version, and by hand, to check the exact output. VERSION needs
// no agent, no configuration and no root.
func TestPluginVersion(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.Symlink(exe, filepath.Join(bin, PluginType)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	t.Run("libcni", func(t *testing.T) {
		info, err := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil).GetVersionInfo(ctx, PluginType)
		if err != nil {
			t.Fatalf("GetVersionInfo(%s): %v", PluginType, err)
		}
		if diff := cmp.Diff(wantVersions, info.SupportedVersions()); diff != "" {
			t.Errorf("GetVersionInfo(%s).SupportedVersions() (-want +got):\n%s", PluginType, diff)
		}
	})

	t.Run("exec", func(t *testing.T) {
		// The spec has the runtime pass a configuration with its own
		// cniVersion; the answer does not depend on it.
		for _, stdin := range []string{`{"cniVersion":"1.1.0"}`, `{"cniVersion":"0.4.0"}`, ""} {
			cmd := exec.CommandContext(ctx, filepath.Join(bin, PluginType))
			cmd.Env = []string{"CNI_COMMAND=VERSION", "PATH=" + os.Getenv("PATH")}
			cmd.Stdin = strings.NewReader(stdin)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("VERSION with stdin %q: %v\nstdout: %s\nstderr: %s", stdin, err, stdout.Bytes(), stderr.Bytes())
			}
			var got struct {
				CNIVersion        string   `json:"cniVersion"`
				SupportedVersions []string `json:"supportedVersions"`
			}
			dec := json.NewDecoder(&stdout)
			dec.DisallowUnknownFields()
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("VERSION with stdin %q printed %q: %v", stdin, stdout.String(), err)
			}
			if got.CNIVersion != "1.1.0" {
				t.Errorf("VERSION with stdin %q: cniVersion %q, want 1.1.0", stdin, got.CNIVersion)
			}
			if diff := cmp.Diff(wantVersions, got.SupportedVersions); diff != "" {
				t.Errorf("VERSION with stdin %q: supportedVersions (-want +got):\n%s", stdin, diff)
			}
			if stderr.Len() > 0 {
				t.Errorf("VERSION with stdin %q wrote to stderr: %s", stdin, stderr.Bytes())
			}
		}
	})
}
