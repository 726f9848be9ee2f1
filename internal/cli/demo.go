package cli

import (
	"context"
	"flag"

	"github.com/trellis-c2c/trellis/internal/demo"
)

var demoCommand = &command{
	name:    "demo",
	group:   groupLocal,
	summary: "Tell the story on a real two-cell foundation: DNS, default deny, a policy, TLS on 61443, flows (needs root)",
	usage:   "demo [--keep] [--state-dir DIR]",
	example: "trellis demo\ntrellis demo --keep",
	setup: func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		keep := fs.Bool("keep", false, "Leave the foundation up at the end and print what to try next")
		dir := fs.String("state-dir", demo.DefaultStateDir, "Keep the demo's foundation in `DIR`")
		return func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return badUsage("demo takes no arguments")
			}
			return demo.Run(ctx, demo.Options{StateDir: *dir, Keep: *keep, Out: e.stdout})
		}
	},
}
