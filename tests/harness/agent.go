package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/nomad/client/devicemanager"
	"github.com/hashicorp/nomad/client/devicemanager/state"
	"github.com/hashicorp/nomad/helper/pluginutils/loader"
	"github.com/hashicorp/nomad/nomad/structs"
	"github.com/hashicorp/nomad/nomad/structs/config"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/device"
)

// runAgent runs Nomad's own client code on the plugin: the plugin loader
// (launch for PluginInfo and ConfigSchema, kill; launch again to validate
// the config with SetConfig, kill) and then the device manager (launch,
// SetConfig with the agent config, Fingerprint, Stats, Reserve, Shutdown).
func runAgent(args []string) error {
	fs, o := newFlags("agent")
	cfgPath := fs.String("config", "", "HCL config file (agent or launcher form)")
	name := fs.String("name", "", "the plugin's file name in plugin_dir, which the plugin block must name (default: --plugin's base name)")
	interval := fs.Duration("stats-interval", time.Second, "the client's stats collection interval")
	reserveFirst := fs.Int("reserve-first", 0, "Reserve the first N device IDs of the first group through the device manager")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	binName := *name
	if binName == "" {
		binName = filepath.Base(o.plugin)
	}
	// The loader execs plugins with the agent's own environment.
	for _, kv := range o.env {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	dir, err := pluginDir(o.plugin, binName)
	if err != nil {
		return atStage("plugin_dir", err)
	}
	defer os.RemoveAll(dir)
	pc, err := readPluginConfig(*cfgPath, binName)
	if err != nil {
		return atStage("read_config", err)
	}
	pc.Name = binName
	if len(o.args) > 0 {
		pc.Args = o.args
	}

	sink := newLogSink(o.logs, binName)
	logger := sink.logger("harness")
	defer func() { emit("launches", launches(sink)) }()

	l, err := loader.NewPluginLoader(&loader.PluginLoaderConfig{
		Logger: logger, PluginDir: dir, Configs: []*config.PluginConfig{pc},
		SupportedVersions: loader.AgentSupportedApiVersions,
	})
	if err != nil {
		emit("loader", fields{"error": err.Error()})
		return atStage("loader", err)
	}
	emit("loader", fields{"error": nil, "catalog": l.Catalog()[base.PluginTypeDevice]})

	var mu sync.Mutex
	var latest []*structs.NodeDeviceResource
	m := devicemanager.New(&devicemanager.Config{
		Logger: logger, Loader: l, PluginConfig: agentConfig(), StatsInterval: *interval, State: &memState{},
		Updater: func(devs []*structs.NodeDeviceResource) {
			mu.Lock()
			latest = devs
			mu.Unlock()
			emit("node_devices", fields{"devices": nodeDevicesJSON(devs)})
		},
	})
	m.Run()
	defer func() {
		start := time.Now()
		m.Shutdown()
		emit("agent_shutdown", fields{"ms": millis(time.Since(start))})
	}()

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	<-m.WaitForFirstFingerprint(ctx)
	if ctx.Err() != nil {
		return atStage("fingerprint", fmt.Errorf("no first fingerprint within %s", o.timeout))
	}

	// Stats come from the manager's collector, as the client's stats endpoint reads them.
	var stats []*device.DeviceGroupStats
	for deadline := time.Now().Add(o.timeout + *interval); time.Now().Before(deadline); time.Sleep(*interval / 4) {
		if stats = m.AllStats(); len(stats) > 0 {
			break
		}
	}
	emit("agent_stats", fields{"groups": statsJSON(stats)})

	if *reserveFirst > 0 {
		mu.Lock()
		devs := latest
		mu.Unlock()
		if len(devs) == 0 || len(devs[0].Instances) < *reserveFirst {
			return atStage("reserve", fmt.Errorf("--reserve-first %d: the first group has fewer devices", *reserveFirst))
		}
		d := devs[0]
		req := &structs.AllocatedDeviceResource{Vendor: d.Vendor, Type: d.Type, Name: d.Name}
		for _, inst := range d.Instances[:*reserveFirst] {
			req.DeviceIDs = append(req.DeviceIDs, inst.ID)
		}
		res, err := m.Reserve(req)
		emit("reserve", fields{"ids": req.DeviceIDs, "reservation": reservationJSON(res), "error": errString(err)})
	}
	return nil
}

// pluginDir makes a plugin_dir holding the plugin under binName. A small
// exec wrapper rather than a symlink: scripts that find their own directory
// through $0 keep working.
func pluginDir(plugin, binName string) (string, error) {
	abs, err := filepath.Abs(plugin)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "harness-plugin-dir")
	if err != nil {
		return "", err
	}
	script := fmt.Sprintf("#!/bin/sh\nexec '%s' \"$@\"\n", strings.ReplaceAll(abs, "'", `'\''`))
	if err := os.WriteFile(filepath.Join(dir, binName), []byte(script), 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func nodeDevicesJSON(devs []*structs.NodeDeviceResource) []fields {
	out := make([]fields, 0, len(devs))
	for _, d := range devs {
		instances := make([]fields, 0, len(d.Instances))
		for _, inst := range d.Instances {
			instances = append(instances, instanceJSON(inst.ID, inst.Healthy, inst.HealthDescription,
				busID(inst.Locality, func(l *structs.NodeDeviceLocality) string { return l.PciBusID })))
		}
		attrs := fields{}
		for k, a := range d.Attributes {
			attrs[k] = attributeJSON(a)
		}
		out = append(out, fields{"vendor": d.Vendor, "type": d.Type, "name": d.Name, "id": d.ID().String(),
			"devices": instances, "attributes": attrs})
	}
	return out
}

// launches reads go-plugin's own log lines: one "plugin started" per exec,
// one "plugin process exited" per exit (with an error for a non-zero exit).
func launches(sink *logSink) fields {
	var pids []any
	for _, e := range sink.matching("plugin started") {
		pids = append(pids, e["pid"])
	}
	var exits []fields
	for _, e := range sink.matching("plugin process exited") {
		exits = append(exits, fields{"id": e["id"], "error": e["error"], "level": e["@level"]})
	}
	return fields{
		"started": pids, "exited": exits,
		"not_graceful":      len(sink.matching("plugin failed to exit gracefully")),
		"plugin_log_levels": sink.pluginLevels(), "plugin_log_unparsed": sink.pluginUnparsed(),
	}
}

// memState stands in for the client's state DB (reattach configs).
type memState struct {
	mu sync.Mutex
	s  *state.PluginState
}

func (m *memState) GetDevicePluginState() (*state.PluginState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.s, nil
}

func (m *memState) PutDevicePluginState(s *state.PluginState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.s = s
	return nil
}
