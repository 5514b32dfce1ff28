package main

import (
	"bufio"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/nomad/plugins/base"
)

// runLatency measures, over n launches each:
//   - handshake: exec to the handshake line on stdout, with the environment
//     go-plugin's client gives the plugin (nothing else in between);
//   - first_rpc: what the agent waits for, go-plugin's client from exec to a
//     PluginInfo answer (handshake parsed, gRPC connected, first call done).
func runLatency(args []string) error {
	fs, o := newFlags("handshake-latency")
	n := fs.Int("n", 20, "launches per measurement")
	mode := fs.String("mode", "both", "handshake, first_rpc or both")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	if *n < 1 || (*mode != "both" && *mode != "handshake" && *mode != "first_rpc") {
		return usageError{"-n must be positive and --mode one of handshake, first_rpc, both"}
	}
	out := fields{"n": *n}
	if *mode != "first_rpc" {
		var samples []float64
		extra := []string{}
		for i := 0; i < *n; i++ {
			ms, line, rest, err := handshakeOnce(o)
			if err != nil {
				return atStage("handshake", fmt.Errorf("launch %d: %w", i+1, err))
			}
			samples = append(samples, ms)
			out["line_fields"] = len(strings.Split(line, "|"))
			out["line_prefix"] = strings.Join(strings.SplitN(line, "|", 4)[:3], "|")
			if rest != "" {
				extra = append(extra, rest)
			}
		}
		out["handshake"] = summary(samples)
		out["stdout_after_handshake"] = extra
	}
	if *mode != "handshake" {
		o.quiet = true
		var samples []float64
		for i := 0; i < *n; i++ {
			start := time.Now()
			p, err := launch(o, false)
			if err != nil {
				return fmt.Errorf("launch %d: %w", i+1, err)
			}
			raw, err := p.dispense(base.PluginTypeBase)
			if err == nil {
				_, err = raw.(base.BasePlugin).PluginInfo()
			}
			ms := millis(time.Since(start))
			p.client.Kill()
			if err != nil {
				return atStage("first_rpc", fmt.Errorf("launch %d: %w", i+1, err))
			}
			samples = append(samples, ms)
		}
		out["first_rpc"] = summary(samples)
	}
	emit("handshake_latency", out)
	return nil
}

// handshakeOnce execs the plugin as go-plugin would, times the first stdout
// line, then stops it with SIGTERM and returns whatever else reached stdout.
func handshakeOnce(o *launchOpts) (ms float64, line, rest string, err error) {
	cmd := exec.Command(o.plugin, o.args...)
	minPort, maxPort := o.minPort, o.maxPort
	if minPort == 0 && maxPort == 0 {
		minPort, maxPort = 10000, 25000
	}
	cmd.Env = append(o.pluginEnv(),
		base.Handshake.MagicCookieKey+"="+base.Handshake.MagicCookieValue,
		fmt.Sprintf("PLUGIN_MIN_PORT=%d", minPort), fmt.Sprintf("PLUGIN_MAX_PORT=%d", maxPort),
		fmt.Sprintf("PLUGIN_PROTOCOL_VERSIONS=%d", base.Handshake.ProtocolVersion))
	cmd.Stderr = io.Discard
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return 0, "", "", err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, "", "", err
	}
	type result struct {
		line string
		err  error
	}
	r := bufio.NewReader(stdout)
	got := make(chan result, 1)
	go func() {
		l, err := r.ReadString('\n')
		got <- result{l, err}
	}()
	var res result
	select {
	case res = <-got:
	case <-time.After(o.timeout):
		res.err = fmt.Errorf("no handshake line within %s", o.timeout)
	}
	ms = millis(time.Since(start))
	_ = cmd.Process.Signal(syscall.SIGTERM)
	restc := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(r)
		restc <- string(b)
	}()
	select {
	case rest = <-restc:
	case <-time.After(o.timeout):
		_ = cmd.Process.Kill()
		rest = <-restc
	}
	_ = cmd.Wait()
	if res.err != nil {
		return 0, "", "", res.err
	}
	return ms, strings.TrimSpace(res.line), rest, nil
}

func summary(samples []float64) fields {
	s := append([]float64{}, samples...)
	sort.Float64s(s)
	mid := len(s) / 2
	median := s[mid]
	if len(s)%2 == 0 {
		median = (s[mid-1] + s[mid]) / 2
	}
	return fields{"median_ms": median, "min_ms": s[0], "max_ms": s[len(s)-1], "samples_ms": samples}
}
