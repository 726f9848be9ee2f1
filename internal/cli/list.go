package cli

import (
	"context"
	"flag"
	"slices"
)

// listing is a listing verb, `trellis NAME [FILTER] [--json]`, said in
// what differs from one to the next: how it fetches its items and how an
// item makes a row. listCommand makes the command of it.
type listing[T any] struct {
	command         // name, group, summary, usage and example; setup is made by listCommand
	jsonHelp string // the help of --json, if not "Print the list as JSON"
	// argsError is the error for positional arguments, if not wantArgs's.
	argsError string
	filter    *nameFilter // the one flag that narrows the list, if any
	// fetch returns the items, in the order shown unless order is set. It
	// says what it lists with l.heading once it knows where it looks.
	fetch func(ctx context.Context, l *listRun) ([]T, error)
	order func(a, b T) int // sorts the items, if not nil
	// noun ends an empty list: "No NOUN found."; without one an empty list
	// is a table of the header alone.
	noun   string
	header []string
	// row makes an item's table row. rows does instead when the rows need
	// more from the controller than the items: it is called only for a
	// table of one or more items.
	row  func(T) []string
	rows func(ctx context.Context, l *listRun, items []T) ([][]string, error)
}

// nameFilter is a listing's filter flag whose value is a name, checked
// before the config is read.
type nameFilter struct {
	flag, help string
	kind       string // the kind of name for checkName: "org", "source app"
	// emptyIsDefault says an empty value means the flag's default (as
	// -o "" does); otherwise a flag given is checked even when empty.
	emptyIsDefault bool
}

// listRun is one run of a listing verb: its session, the filter's value
// and whether it prints JSON.
type listRun struct {
	*session
	filter string
	json   bool
}

// heading prints what the listing lists, and a blank line, on a table's
// run (JSON is the list alone).
func (l *listRun) heading(format string, args ...any) {
	if !l.json {
		l.printf(format+"\n\n", args...)
	}
}

// listCommand makes the command of a listing: it checks the command line,
// loads the session, fetches and sorts the items and prints them as JSON,
// as "No NOUN found." or as a table.
func listCommand[T any](li listing[T]) *command {
	c := li.command
	c.config = true
	c.setup = func(fs *flag.FlagSet, e *env) func(context.Context, []string) error {
		var filter *string
		if li.filter != nil {
			filter = fs.String(li.filter.flag, "", li.filter.help)
		}
		asJSON := fs.Bool("json", false, orDefault(li.jsonHelp, "Print the list as JSON"))
		return func(ctx context.Context, args []string) error {
			if err := li.checkArgs(fs, args, filter); err != nil {
				return err
			}
			s, err := e.session()
			if err != nil {
				return err
			}
			l := &listRun{session: s, json: *asJSON}
			if filter != nil {
				l.filter = *filter
			}
			items, err := li.fetch(ctx, l)
			if err != nil {
				return err
			}
			return li.print(ctx, l, items)
		}
	}
	return &c
}

// checkArgs checks the positional arguments (none) and the filter's value.
func (li *listing[T]) checkArgs(fs *flag.FlagSet, args []string, filter *string) error {
	if li.argsError != "" && len(args) > 0 {
		return badUsage("%s", li.argsError)
	}
	if err := wantArgs(args); err != nil {
		return err
	}
	f := li.filter
	if f == nil || (f.emptyIsDefault && *filter == "") || !setFlags(fs)[f.flag] {
		return nil
	}
	return checkName(f.kind, *filter)
}

// print prints items, sorted, as JSON, or "No NOUN found.", or a table.
func (li *listing[T]) print(ctx context.Context, l *listRun, items []T) error {
	if li.order != nil {
		slices.SortFunc(items, li.order)
	}
	if l.json {
		return l.printJSON(nonNil(items))
	}
	if len(items) == 0 && li.noun != "" {
		l.printf("No %s found.\n", li.noun)
		return nil
	}
	var rows [][]string
	if li.rows != nil && len(items) > 0 {
		var err error
		if rows, err = li.rows(ctx, l, items); err != nil {
			return err
		}
	}
	if li.row != nil {
		for _, it := range items {
			rows = append(rows, li.row(it))
		}
	}
	l.printTable(li.header, rows)
	return nil
}

// nonNil makes an empty list print as [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
