// compose-validate checks a Compose file with compose-go, the Compose specification's reference
// loader (the one Docker Compose itself uses). Loading validates the file against the
// specification's JSON schema, interpolates it, and checks its consistency: services named in
// depends_on, networks, volumes, configs and secrets must exist. On top of that it applies the
// project's pinning rule: every image that is pulled names an explicit version (a tag other than
// "latest", or a digest), and every service that is built names the image it builds.
//
// Usage: compose-validate [-profiles LIST] FILE
//
// -profiles is a comma-separated list of profiles to enable: "*" (the default) enables every
// profile, so services behind profiles are checked too; "" enables none, which checks what a
// plain `docker compose up` starts on its own.
// Interpolation sees no environment at all (neither the process's nor a .env file), so the file
// is checked with its own defaults, the same on every machine. Exits 1 on the first problem.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	list := flag.String("profiles", "*", `profiles to enable, comma-separated; "*" all, "" none`)
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: compose-validate [-profiles LIST] FILE")
		os.Exit(2)
	}
	file := flag.Arg(0)
	profiles := []string{}
	if *list != "" {
		profiles = strings.Split(*list, ",")
	}
	if err := validate(file, profiles); err != nil {
		fmt.Fprintf(os.Stderr, "compose-validate: %s: %v\n", file, err)
		os.Exit(1)
	}
}

func validate(file string, profiles []string) error {
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		return err
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return err
	}
	if len(project.Services) == 0 {
		return fmt.Errorf("no services")
	}

	names := make([]string, 0, len(project.Services))
	var problems []string
	for name, svc := range project.Services {
		names = append(names, name)
		switch {
		case svc.Build != nil && svc.Image == "":
			problems = append(problems, fmt.Sprintf("service %q is built but names no image", name))
		case svc.Build == nil && !pinned(svc.Image):
			problems = append(problems, fmt.Sprintf("service %q: image %q names no version (tag or digest; not latest)", name, svc.Image))
		}
	}
	sort.Strings(names)
	sort.Strings(problems)
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}

	images := make([]string, 0, len(names))
	for _, name := range names {
		svc := project.Services[name]
		desc := name + "=" + svc.Image
		if svc.Build != nil {
			desc += " (built)"
		}
		if len(svc.Profiles) > 0 {
			desc += " [profiles: " + strings.Join(svc.Profiles, ",") + "]"
		}
		images = append(images, desc)
	}
	fmt.Printf("compose-validate: %s: valid (project %q, %d services, profiles %q)\n",
		file, project.Name, len(names), strings.Join(profiles, ","))
	for _, line := range images {
		fmt.Printf("  %s\n", line)
	}
	return nil
}

// pinned reports whether an image reference names a version: a digest, or a tag other than
// "latest". The tag is what follows the last ':' after the last '/' (a registry port comes before).
func pinned(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	last := image[strings.LastIndex(image, "/")+1:]
	i := strings.LastIndex(last, ":")
	if i < 0 {
		return false
	}
	tag := last[i+1:]
	return tag != "" && tag != "latest"
}
