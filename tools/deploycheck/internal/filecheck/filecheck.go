// Package filecheck is the command line the file checkers share: each file named on it is
// checked, a line per valid file on stdout, a line per error on stderr (however many lines the
// error's message has), exit status 1 when any file has an error, 2 without files.
package filecheck

import (
	"fmt"
	"os"
	"strings"
)

// Main checks each file of os.Args with check, which returns a summary of a valid file or its errors.
func Main(usage string, check func(file string) (string, []error)) {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage:", usage)
		os.Exit(2)
	}
	failed := false
	for _, file := range os.Args[1:] {
		summary, errs := check(file)
		if len(errs) == 0 {
			fmt.Printf("%s: %s\n", file, summary)
			continue
		}
		failed = true
		for _, err := range errs {
			fmt.Fprintf(os.Stderr, "%s: %s\n", file, strings.Join(strings.Fields(strings.ReplaceAll(err.Error(), "\n", " ; ")), " "))
		}
	}
	if failed {
		os.Exit(1)
	}
}
