// cdicheck reads CDI spec directories with the Container Device Interface
// library (tags.cncf.io/container-device-interface), the code container
// runtimes use, so the tests check our reading of NVIDIA's specs against it.
//
//	cdicheck validate DIR...
//	    every spec in DIR loaded and validated; prints {"devices": [...], "errors": {...}}
//	    and exits 1 when any spec or directory has errors.
//	cdicheck inject --dirs DIR[,DIR] DEVICE...
//	    the OCI runtime spec edits a CDI-aware runtime makes for the qualified
//	    devices (nvidia.com/gpu=NAME): env, mounts, Linux devices and their
//	    cgroup rules, hooks; printed as one JSON object.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	oci "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "validate":
		os.Exit(validate(os.Args[2:]))
	case "inject":
		os.Exit(inject(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cdicheck validate DIR... | cdicheck inject --dirs DIR[,DIR] DEVICE...")
	os.Exit(2)
}

func load(dirs []string) (*cdi.Cache, map[string][]string) {
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	problems := map[string][]string{}
	if err != nil {
		problems["cache"] = append(problems["cache"], err.Error())
	}
	for path, errs := range cache.GetErrors() {
		for _, e := range errs {
			problems[path] = append(problems[path], e.Error())
		}
	}
	return cache, problems
}

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func validate(dirs []string) int {
	if len(dirs) == 0 {
		usage()
	}
	cache, problems := load(dirs)
	devices := cache.ListDevices()
	sort.Strings(devices)
	emit(map[string]any{"devices": devices, "errors": problems})
	if len(problems) > 0 || len(devices) == 0 {
		return 1
	}
	return 0
}

func inject(args []string) int {
	fs := flag.NewFlagSet("inject", flag.ExitOnError)
	dirs := fs.String("dirs", "", "comma-separated spec directories, lowest priority first")
	_ = fs.Parse(args)
	if *dirs == "" || fs.NArg() == 0 {
		usage()
	}
	cache, problems := load(strings.Split(*dirs, ","))
	spec := &oci.Spec{Process: &oci.Process{}, Linux: &oci.Linux{}}
	if _, err := cache.InjectDevices(spec, fs.Args()...); err != nil {
		emit(map[string]any{"error": err.Error(), "errors": problems})
		return 1
	}
	var rules []oci.LinuxDeviceCgroup
	if spec.Linux.Resources != nil {
		rules = spec.Linux.Resources.Devices
	}
	emit(map[string]any{
		"env":     spec.Process.Env,
		"mounts":  spec.Mounts,
		"devices": spec.Linux.Devices,
		"cgroup":  rules,
		"hooks":   spec.Hooks,
		"errors":  problems,
	})
	return 0
}
