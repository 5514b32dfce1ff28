// Command harness drives a Nomad device plugin the way Nomad's client does
// (go-plugin client, base.Handshake, hclspec conversion, cty msgpack config,
// the plugins/device gRPC client) and prints what happened as JSON, one
// document per line on stdout, for pytest to assert on.
//
// Exit status: 0 when the run completed (plugin-side errors are reported in
// the events), 1 when the harness could not go on (an "error" event says
// where), 2 for bad usage.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
)

type command struct {
	summary string
	run     func(args []string) error
}

var commands = map[string]command{
	"info":              {"launch, PluginInfo, ConfigSchema (converted with hclspecutils)", runInfo},
	"session":           {"SetConfig, Fingerprint, Stats, Reserve, Shutdown on one plugin process", runSession},
	"configs":           {"a sequence of SetConfig calls (agent-encoded HCL or raw msgpack), probing after each", runConfigs},
	"streams":           {"open Fingerprint and Stats, cancel, reopen, several times", runStreams},
	"agent":             {"Nomad's own plugin loader and device manager, as the agent runs them at start", runAgent},
	"launch-twice":      {"alias of agent: the loader launches the plugin, kills it and launches it again", runAgent},
	"handshake-latency": {"exec to handshake line, and exec to first RPC, over N launches", runLatency},
	"limits":            {"many Fingerprint and Stats streams at once, then every unary call timed while they are open", runLimits},
	"cost":              {"CPU, threads and RSS of the plugin from /proc: Fingerprint open (idle), then Stats at each interval", runCost},
	"timeline":          {"Fingerprint (and Stats) kept open, every response timed, until steps are met in order; Reserve; Shutdown or SIGKILL", runTimeline},
}

func main() {
	if len(os.Args) < 2 || commands[os.Args[1]].run == nil {
		usage()
		os.Exit(2)
	}
	err := commands[os.Args[1]].run(os.Args[2:])
	if err == nil {
		return
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(2)
	}
	stage := "harness"
	var se stageError
	if errors.As(err, &se) {
		stage = se.stage
	}
	emit("error", fields{"stage": stage, "error": err.Error()})
	os.Exit(1)
}

func usage() {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintln(os.Stderr, "usage: harness <command> --plugin PATH [flags]   (harness <command> -h for flags)")
	for _, name := range names {
		fmt.Fprintf(os.Stderr, "  %-18s %s\n", name, commands[name].summary)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// stageError names the step of the plugin's life that failed.
type stageError struct {
	stage string
	err   error
}

func (e stageError) Error() string { return e.err.Error() }
func (e stageError) Unwrap() error { return e.err }

func atStage(stage string, err error) error {
	if err == nil {
		return nil
	}
	return stageError{stage, err}
}
