// Command dockerfilecheck reads Dockerfiles as `docker build` does: BuildKit's own parser and
// instruction parser (github.com/moby/buildkit/frontend/dockerfile), with the build checks that
// `docker build --check` runs while parsing. A syntax error or a check's warning is printed as
// "<file>:<line>: <rule>: <message>" on stderr and the exit status is 1. Otherwise each file's
// stages go to stdout as JSON ({file: [{name, base, commands: [{instruction, line, text}]}]}), for
// tests that hold the image to what the deployments expect of it.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

type command struct {
	Instruction string `json:"instruction"`
	Line        int    `json:"line"`
	Text        string `json:"text"`
}

type stage struct {
	Name     string    `json:"name"`
	Base     string    `json:"base"`
	Commands []command `json:"commands"`
}

func check(path string) ([]stage, []string) {
	file, err := os.Open(path)
	if err != nil {
		return nil, []string{fmt.Sprintf("%s: %v", path, err)}
	}
	defer file.Close()
	var problems []string
	result, err := parser.Parse(file)
	if err != nil {
		return nil, []string{fmt.Sprintf("%s: %v", path, err)}
	}
	for _, warning := range result.Warnings {
		problems = append(problems, fmt.Sprintf("%s:%d: parser: %s", path, warning.Location.Start.Line, warning.Short))
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, message string, location []parser.Range) {
		line := 0
		if len(location) > 0 {
			line = location[0].Start.Line
		}
		problems = append(problems, fmt.Sprintf("%s:%d: %s: %s", path, line, rule, message))
	}})
	parsed, _, err := instructions.Parse(result.AST, lint)
	if err != nil {
		return nil, append(problems, fmt.Sprintf("%s: %v", path, err))
	}
	stages := []stage{}
	for _, s := range parsed {
		out := stage{Name: s.Name, Base: s.BaseName, Commands: []command{}}
		for _, c := range s.Commands {
			line := 0
			if location := c.Location(); len(location) > 0 {
				line = location[0].Start.Line
			}
			out.Commands = append(out.Commands, command{Instruction: strings.ToLower(c.Name()), Line: line, Text: fmt.Sprint(c)})
		}
		stages = append(stages, out)
	}
	return stages, problems
}

func main() {
	files := map[string][]stage{}
	failed := false
	for _, path := range os.Args[1:] {
		stages, problems := check(path)
		for _, problem := range problems {
			fmt.Fprintln(os.Stderr, problem)
			failed = true
		}
		files[path] = stages
	}
	if failed {
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(files); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
