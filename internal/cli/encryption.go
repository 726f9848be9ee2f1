package cli

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"

	"github.com/trellis-c2c/trellis/internal/api"
	"github.com/trellis-c2c/trellis/internal/launcher"
)

// Encryption between cells (issue 18): the foundation-wide switch and the
// rotation of the cells' WireGuard keys.

var encryptionCommand = &command{
	name:    "encryption",
	group:   groupControlPlane,
	summary: "Show, or turn on (wireguard) or off, encryption of all traffic between cells (admin to change)",
	usage:   "encryption [wireguard|off]",
	example: "trellis encryption\ntrellis encryption wireguard\ntrellis encryption off",
	detail: `With wireguard, every packet between cells travels inside WireGuard: apps,
policies and identities are unchanged, and plaintext such as HTTP on 8080
no longer crosses the underlay readable. Each cell makes its own key pair;
its private key never leaves the cell (its state dir, mode 0600), and the
controller hands every cell the others' public keys. Turning it on or off
converges every cell live, without restarting instances. Without an
argument, prints the mode. New foundations start with the controller's
--encryption (default off). Rotate keys with trellis rotate-cell-keys.`,
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if len(args) > 1 || (len(args) == 1 && args[0] != api.EncryptionWireGuard && args[0] != api.EncryptionOff) {
				return badUsage("encryption takes wireguard or off")
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				s.printf("Setting encryption between cells to %s as %s...\n", args[0], s.user())
				if err := s.client.SetEncryption(ctx, args[0]); err != nil {
					return err
				}
				s.ok()
				if args[0] == api.EncryptionOff {
					fmt.Fprintln(e.stderr, "WARNING: encryption between cells is now OFF: traffic between cells crosses the underlay in plaintext.")
				} else {
					s.printf("Every cell converges within seconds; see `trellis status` for each cell's key.\n")
				}
			}
			mode, err := s.client.Encryption(ctx)
			if err != nil {
				return err
			}
			e.printf("encryption between cells: %s\n", mode)
			return nil
		}
	},
}

var rotateCellKeysCommand = &command{
	name:    "rotate-cell-keys",
	group:   groupControlPlane,
	summary: "Make cells replace their WireGuard key pairs (admin)",
	usage:   "rotate-cell-keys [CELL...]",
	example: "trellis rotate-cell-keys\ntrellis rotate-cell-keys cell1 cell2",
	detail: `Asks the named cells (all if none) for a new WireGuard key pair: each
cell's agent makes the pair itself, keeps the private key and registers
the public one, and every other cell takes it up; traffic keeps flowing
across the change. A rotation already asked for and not yet done is not
asked twice. The controller's --cell-key-rotation DURATION (e.g. 720h)
does this on a schedule for keys older than that. The table shows the
key generation each cell must now reach; trellis status shows it reached.`,
	config: true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			for _, a := range args {
				if strings.TrimSpace(a) == "" {
					return badUsage("rotate-cell-keys: a cell name must not be empty")
				}
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			which := "every cell"
			if len(args) > 0 {
				which = strings.Join(args, ", ")
			}
			s.printf("Rotating the WireGuard keys of %s as %s...\n", which, s.user())
			out, err := s.client.RotateCellKeys(ctx, args)
			if err != nil {
				return err
			}
			s.ok()
			s.printf("\n")
			rows := [][]string{}
			for _, c := range out.Cells {
				rows = append(rows, []string{c.Name, strconv.FormatInt(c.KeyGeneration, 10)})
			}
			e.printTable([]string{"cell", "key generation wanted"}, rows)
			return nil
		}
	},
}

// printCellKeys prints, in `trellis status`'s header, whether
// each cell registered a WireGuard key and at which generation (as the
// controller says; nothing if it did not answer).
func (e *env) printCellKeys(st launcher.FoundationStatus) {
	var keys []string
	for _, c := range st.Cells {
		if k := c.KeyStatus(); k != "" {
			keys = append(keys, c.Name+": "+k)
		}
	}
	if len(keys) > 0 {
		e.printf("cell keys    %s\n", strings.Join(keys, "; "))
	}
}
