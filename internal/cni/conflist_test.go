package cni

import (
	"encoding/json"
	"slices"
	"testing"
)

// TestConfListOlderRuntimes checks that the list works for runtimes whose
// libcni predates "cniVersions" (1.1 and older: Debian 12's podman 4.3,
// containerd 1.6): they read "cniVersion" alone, which must be a version
// they can parse results of and the plugin speaks, while newer ones pick
// the highest of "cniVersions" (TestConfListLoadsInLibcni).
func TestConfListOlderRuntimes(t *testing.T) {
	var list struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
	}
	if err := json.Unmarshal(ConfList("trellis", "cell1", "/run/trellis/cell1.sock"), &list); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" {
		t.Errorf("cniVersion = %q, want 1.0.0 (libcni 1.1 cannot parse a 1.1.0 result)", list.CNIVersion)
	}
	for _, v := range append([]string{list.CNIVersion}, list.CNIVersions...) {
		if !slices.Contains(SupportedVersions, v) {
			t.Errorf("the list names version %s, which the plugin does not speak (%v)", v, SupportedVersions)
		}
	}
	if !slices.Contains(list.CNIVersions, "1.1.0") {
		t.Errorf("cniVersions = %v, want 1.1.0 among them (STATUS and GC)", list.CNIVersions)
	}
}
