// Command dashcheck decodes Grafana dashboard JSON files with Grafana's own dashboard schema, as
// generated into grafana-foundation-sdk: strictly (an unknown field or a wrong type is an error,
// with its path), each panel's options and field config by its panel type's schema, then the
// schema's constraints.
package main

import (
	"fmt"
	"os"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"

	"shrinkwatch/tools/deploycheck/internal/filecheck"
)

func main() {
	plugins.RegisterDefaultPlugins()
	filecheck.Main("dashcheck DASHBOARD_JSON...", func(file string) (string, []error) {
		raw, err := os.ReadFile(file)
		if err == nil {
			var board dashboard.Dashboard
			if err = noErrors(board.UnmarshalJSONStrict(raw)); err == nil {
				err = noErrors(board.Validate())
			}
			if err == nil {
				return fmt.Sprintf("%d panels", len(board.Panels)), nil
			}
		}
		return "", []error{err}
	})
}

// noErrors turns the SDK's empty list of errors (a nil cog.BuildErrors, which is a non-nil error
// value) into nil.
func noErrors(err error) error {
	if errs, ok := err.(cog.BuildErrors); ok && len(errs) == 0 {
		return nil
	}
	return err
}
