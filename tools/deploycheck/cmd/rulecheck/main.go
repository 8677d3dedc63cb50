// Command rulecheck checks Prometheus rule files with Prometheus' own rule-file parser (the code
// `promtool check rules` runs: YAML structure with unknown fields refused, every PromQL expression
// parsed, durations, label names, and the templates of labels and annotations).
package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"shrinkwatch/tools/deploycheck/internal/filecheck"
)

func main() {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	promql := parser.NewParser(parser.Options{})
	filecheck.Main("rulecheck RULE_FILE...", func(file string) (string, []error) {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, logger)
		if len(errs) > 0 {
			return "", errs
		}
		rules := 0
		for _, group := range groups.Groups {
			rules += len(group.Rules)
		}
		return fmt.Sprintf("%d rules in %d groups", rules, len(groups.Groups)), nil
	})
}
