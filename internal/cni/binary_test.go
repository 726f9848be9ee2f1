package cni

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPluginBinary(t *testing.T) {
	tests := []struct {
		name  string
		setup func(dir string) error // makes what is next to trellis
		want  string                 // "trellis" or PluginType
	}{
		{"trellis-cni next to trellis", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, PluginType), []byte("#!/bin/true\n"), 0o755)
		}, PluginType},
		{"none", func(string) error { return nil }, "trellis"},
		{"not executable", func(dir string) error {
			return os.WriteFile(filepath.Join(dir, PluginType), []byte("#!/bin/true\n"), 0o644)
		}, "trellis"},
		{"a directory", func(dir string) error {
			return os.Mkdir(filepath.Join(dir, PluginType), 0o755)
		}, "trellis"},
		{"a dangling link", func(dir string) error {
			return os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, PluginType))
		}, "trellis"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			exe := filepath.Join(dir, "trellis")
			if err := os.WriteFile(exe, []byte("#!/bin/true\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := tt.setup(dir); err != nil {
				t.Fatal(err)
			}
			if got, want := PluginBinary(exe), filepath.Join(dir, tt.want); got != want {
				t.Errorf("PluginBinary(%s) = %s, want %s", exe, got, want)
			}
		})
	}
}
