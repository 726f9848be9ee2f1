package cli

import (
	"context"
	"flag"
	"fmt"

	"github.com/trellis-c2c/trellis/internal/console"
)

// uiCommand prints where the web console is: the URL on each controller
// the config names (the token stays out of the output and out of URLs).
var uiCommand = &command{
	name:    "ui",
	group:   groupControlPlane,
	summary: "Print the URL of the web console (apps, policies, live flows)",
	usage:   "ui",
	example: "trellis ui",
	config:  true,
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		return func(ctx context.Context, args []string) error {
			if err := wantArgs(args); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			urls := s.cfg.APIURLs
			if len(urls) == 0 {
				urls = []string{s.cfg.APIURL}
			}
			for _, u := range urls {
				fmt.Fprintln(e.stdout, console.URL(u))
			}
			fmt.Fprintf(e.stdout, "Log in with a token (the \"token\" of %s, or one from `trellis create-token`) or a user's name and password.\n", s.path)
			fmt.Fprintln(e.stdout, "The controller's certificate is signed by the CA in that config (\"ca_cert\"): trust it in the browser, or accept the warning for a local foundation.")
			return nil
		}
	},
}
