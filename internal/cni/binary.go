package cni

import (
	"os"
	"path/filepath"
)

// PluginBinary is the file to install as PluginType for the trellis binary
// exe: the trellis-cni binary in exe's directory when there is one (`go
// build -o . ./cmd/...` puts both there), else exe itself, which runs the
// plugin too when CNI_COMMAND is set but takes about twice as long to
// start: it links the controller, the store and metrics, whose package
// initialisers run before every CNI command.
func PluginBinary(exe string) string {
	p := filepath.Join(filepath.Dir(exe), PluginType)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return exe
}
