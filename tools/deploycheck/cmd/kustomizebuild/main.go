// Command kustomizebuild renders a kustomization as `kustomize build` does (it runs the same
// library, sigs.k8s.io/kustomize/api's krusty, with kustomize's default options): the resources
// it yields, as a YAML stream on stdout. Any error (a missing file, a patch that matches nothing,
// a resource defined twice) goes to stderr with exit status 1.
package main

import (
	"fmt"
	"os"

	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kustomizebuild <kustomization folder>")
		os.Exit(2)
	}
	kustomizer := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := kustomizer.Run(filesys.MakeFsOnDisk(), os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	out, err := resources.AsYaml()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	os.Stdout.Write(out)
}
