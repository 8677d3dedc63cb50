// Command dashcheck decodes Grafana dashboard JSON files with Grafana's own dashboard schema, as
// generated into grafana-foundation-sdk: strictly (an unknown field or a wrong type is an error,
// with its path), each panel's options and field config by its panel type's schema, then the
// schema's constraints. One line per file, each error; exit status 1 when any file has one.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck DASHBOARD_JSON...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, file := range os.Args[1:] {
		raw, err := os.ReadFile(file)
		if err == nil {
			var board dashboard.Dashboard
			if err = noErrors(board.UnmarshalJSONStrict(raw)); err == nil {
				err = noErrors(board.Validate())
			}
			if err == nil {
				fmt.Printf("%s: %d panels\n", file, len(board.Panels))
				continue
			}
		}
		failed = true
		fmt.Fprintf(os.Stderr, "%s: %s\n", file, oneLine(err))
	}
	if failed {
		os.Exit(1)
	}
}

// noErrors turns the SDK's empty list of errors (a nil cog.BuildErrors, which is a non-nil error
// value) into nil.
func noErrors(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}

// oneLine keeps each error on its own line of the output, however many lines its message has.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; ")), " ")
}
