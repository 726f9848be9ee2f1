package main

import (
	"maps"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestDeps fails when trellis-cni links a package it should not: every
// package initialiser linked in runs before each CNI command, and the
// plugin's start is on the path of every container start. Of trellis's
// own packages it may link only these; of others, nothing of the store
// or metrics.
func TestDeps(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the dependencies with")
	}
	const module = "github.com/trellis-c2c/trellis/"
	allowed := map[string]bool{
		module + "cmd/trellis-cni":    true,
		module + "internal/cni":       true,
		module + "internal/dataplane": true, // the container wiring
		module + "internal/netns":     true,
		module + "internal/wireguard": true, // the dataplane's key and peer types, not the engines
	}
	// net/http and crypto/tls (package api's clients) cost every start
	// about 10 ms of CPU: the plugin speaks to the agent itself. WireGuard's
	// engines are the agent's alone (the dataplane is given them).
	forbidden := []string{"sqlite", "pgx", "prometheus", "protobuf", "html/template", "net/http", "crypto/tls",
		"wireguard/device", "wireguard/tun", "wireguard/conn", "wgctrl/internal", "internal/wireguard/engine"}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module) && !allowed[pkg] {
			t.Errorf("trellis-cni links %s: of trellis, the plugin may link only %v", pkg, slices.Sorted(maps.Keys(allowed)))
		}
		for _, f := range forbidden {
			if strings.Contains(pkg, f) {
				t.Errorf("trellis-cni links %s (%s): the plugin must not", pkg, f)
			}
		}
	}
}
