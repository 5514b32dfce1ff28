package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	hclog "github.com/hashicorp/go-hclog"
	plugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/device"
)

// launchOpts are the flags every command shares: which plugin, and how the
// go-plugin client starts it.
type launchOpts struct {
	plugin   string
	args     listFlag
	env      listFlag
	autoMTLS bool
	minPort  uint
	maxPort  uint
	logs     bool
	timeout  time.Duration
	quiet    bool // no launch event (latency runs)
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func newFlags(name string) (*flag.FlagSet, *launchOpts) {
	o := new(launchOpts)
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&o.plugin, "plugin", "", "plugin executable (required)")
	fs.Var(&o.args, "arg", "argument for the plugin executable (repeatable)")
	fs.Var(&o.env, "env", "KEY=VALUE added to the plugin's environment (repeatable)")
	fs.BoolVar(&o.autoMTLS, "automtls", false, "go-plugin AutoMTLS (PLUGIN_CLIENT_CERT, TLS on the connection)")
	fs.UintVar(&o.minPort, "min-port", 0, "PLUGIN_MIN_PORT (go-plugin default 10000)")
	fs.UintVar(&o.maxPort, "max-port", 0, "PLUGIN_MAX_PORT (go-plugin default 25000)")
	fs.BoolVar(&o.logs, "logs", false, "print every log line the client records (the plugin's stderr included) as a log event")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Second, "limit for any single wait on the plugin")
	return fs, o
}

func parseFlags(fs *flag.FlagSet, o *launchOpts, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	if o.plugin == "" {
		return usageError{"--plugin is required"}
	}
	for _, kv := range o.env {
		if !strings.Contains(kv, "=") {
			return usageError{fmt.Sprintf("--env %q: want KEY=VALUE", kv)}
		}
	}
	return nil
}

// pluginEnv is the harness's environment with the --env additions last, so
// they win over inherited values; go-plugin then appends its own variables.
func (o *launchOpts) pluginEnv() []string {
	return append(os.Environ(), o.env...)
}

// proc is one plugin process started by go-plugin's client.
type proc struct {
	client *plugin.Client
	cmd    *exec.Cmd
	rpc    plugin.ClientProtocol
	logs   *logSink
}

// launch starts the plugin as Nomad's loader does: base.Handshake, gRPC only,
// and the plugin set for the requested types ("base" always).
func launch(o *launchOpts, withDevice bool) (*proc, error) {
	plugins := map[string]plugin.Plugin{base.PluginTypeBase: &base.PluginBase{}}
	if withDevice {
		plugins[base.PluginTypeDevice] = &device.PluginDevice{}
	}
	cmd := exec.Command(o.plugin, o.args...)
	cmd.Env = o.pluginEnv()
	sink := newLogSink(o.logs, o.plugin)
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  base.Handshake,
		Plugins:          plugins,
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           sink.logger("harness"),
		AutoMTLS:         o.autoMTLS,
		MinPort:          o.minPort,
		MaxPort:          o.maxPort,
		StartTimeout:     o.timeout,
		SkipHostEnv:      true, // cmd.Env already holds the host environment
	}
	client := plugin.NewClient(cfg)
	start := time.Now()
	rpc, err := client.Client()
	if err != nil {
		client.Kill()
		emit("launch", fields{"error": err.Error(), "plugin_stderr_tail": sink.pluginTail(20)})
		return nil, atStage("launch", err)
	}
	p := &proc{client: client, cmd: cmd, rpc: rpc, logs: sink}
	ev := fields{
		"ready_ms": millis(time.Since(start)), "protocol": string(client.Protocol()),
		"negotiated_version": client.NegotiatedVersion(), "automtls": o.autoMTLS,
		// With AutoMTLS the client trusts only the certificate the plugin put
		// in its handshake line; the RPCs that follow prove TLS works.
		"server_cert_loaded": cfg.TLSConfig != nil && cfg.TLSConfig.RootCAs != nil,
	}
	if rc := client.ReattachConfig(); rc != nil {
		ev["pid"] = rc.Pid
		if rc.Addr != nil {
			ev["network"], ev["address"] = rc.Addr.Network(), rc.Addr.String()
		}
	}
	if !o.quiet {
		emit("launch", ev)
	}
	return p, nil
}

func (p *proc) dispense(name string) (any, error) {
	raw, err := p.rpc.Dispense(name)
	return raw, atStage("dispense "+name, err)
}

// shutdown is client.Kill: go-plugin calls the controller's Shutdown, waits
// up to 2 s for the process to exit, then kills it.
func (p *proc) shutdown() fields {
	start := time.Now()
	p.client.Kill()
	out := fields{
		"kill_ms": millis(time.Since(start)), "exited": p.client.Exited(),
		"graceful":  !p.logs.saw("plugin failed to exit gracefully"),
		"exit_code": nil, "signal": nil,
	}
	if ps := p.cmd.ProcessState; ps != nil {
		out["exit_code"] = ps.ExitCode()
		if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			out["signal"] = ws.Signal().String()
			out["graceful"] = false
		}
	}
	out["plugin_log_levels"] = p.logs.pluginLevels()
	out["plugin_log_unparsed"] = p.logs.pluginUnparsed()
	return out
}

// logSink receives the client's hclog JSON output. go-plugin re-logs each
// stderr line of the plugin under a sub-logger, at the level the line carries
// when it is hclog JSON, else at debug with the raw line as message.
type logSink struct {
	mu      sync.Mutex
	print   bool
	base    string // the plugin executable's base name: go-plugin's sub-logger name
	buf     []byte
	entries []map[string]any
}

func newLogSink(print bool, pluginPath string) *logSink {
	return &logSink{print: print, base: filepath.Base(pluginPath)}
}

func (s *logSink) logger(name string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: name, Level: hclog.Trace, JSONFormat: true, Output: s})
}

func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, b...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		line := s.buf[:i]
		s.buf = s.buf[i+1:]
		var entry map[string]any
		if json.Unmarshal(line, &entry) != nil {
			entry = map[string]any{"@message": string(line), "@level": "unknown"}
		}
		s.entries = append(s.entries, entry)
		if s.print {
			emit("log", fields{"entry": entry, "from_plugin": s.fromPlugin(entry)})
		}
	}
}

// fromPlugin: relayed plugin lines carry the plugin's own timestamp (hclog
// JSON lines) or come from the "<logger>.<binary>" sub-logger (other lines).
func (s *logSink) fromPlugin(e map[string]any) bool {
	if _, ok := e["timestamp"]; ok {
		return true
	}
	mod, _ := e["@module"].(string)
	return strings.HasSuffix(mod, "."+s.base)
}

func (s *logSink) saw(message string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.entries {
		if e["@message"] == message {
			return true
		}
	}
	return false
}

func (s *logSink) matching(message string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, e := range s.entries {
		if e["@message"] == message {
			out = append(out, e)
		}
	}
	return out
}

func (s *logSink) pluginLevels() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	levels := map[string]int{}
	for _, e := range s.entries {
		if s.fromPlugin(e) {
			lvl, _ := e["@level"].(string)
			levels[lvl]++
		}
	}
	return levels
}

// pluginTail is the last n plugin lines, as messages, to explain a failed start.
func (s *logSink) pluginTail(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []string{}
	for _, e := range s.entries {
		if s.fromPlugin(e) {
			msg, _ := e["@message"].(string)
			out = append(out, msg)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// pluginUnparsed lists plugin stderr lines go-plugin could not read as hclog
// JSON (it logs those at debug with the raw text as the message).
func (s *logSink) pluginUnparsed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []string{}
	for _, e := range s.entries {
		if _, ok := e["timestamp"]; ok || !s.fromPlugin(e) {
			continue
		}
		msg, _ := e["@message"].(string)
		out = append(out, msg)
	}
	return out
}
