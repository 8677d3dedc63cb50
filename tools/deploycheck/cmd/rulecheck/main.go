// Command rulecheck checks Prometheus rule files with Prometheus' own rule-file parser (the code
// `promtool check rules` runs: YAML structure with unknown fields refused, every PromQL expression
// parsed, durations, label names, and the templates of labels and annotations). It prints one line
// per file, and each error; exit status 1 when any file has one.
package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: rulecheck RULE_FILE...")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	promql := parser.NewParser(parser.Options{})
	failed := false
	for _, file := range os.Args[1:] {
		groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, logger)
		if len(errs) > 0 {
			failed = true
			for _, err := range errs {
				fmt.Fprintf(os.Stderr, "%s: %s\n", file, oneLine(err))
			}
			continue
		}
		rules := 0
		for _, group := range groups.Groups {
			rules += len(group.Rules)
		}
		fmt.Printf("%s: %d rules in %d groups\n", file, rules, len(groups.Groups))
	}
	if failed {
		os.Exit(1)
	}
}

// oneLine keeps each error on its own line of the output, however many lines its message has.
func oneLine(err error) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; ")), " ")
}
