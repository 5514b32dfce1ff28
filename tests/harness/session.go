package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/device"
)

// started is a launched plugin with both interfaces dispensed and its info
// and schema checked, ready for SetConfig.
type started struct {
	proc *proc
	base base.BasePlugin
	dev  device.DevicePlugin
	api  string
	spec hcldec.Spec
}

// start launches the plugin and does what the loader does before SetConfig:
// dispense "base", PluginInfo, ConfigSchema (converted), then dispense "device".
func start(o *launchOpts) (*started, error) {
	p, err := launch(o, true)
	if err != nil {
		return nil, err
	}
	s := &started{proc: p}
	fail := func(err error) (*started, error) {
		emit("shutdown", p.shutdown())
		return nil, err
	}
	raw, err := p.dispense(base.PluginTypeBase)
	if err != nil {
		return fail(err)
	}
	var ok bool
	if s.base, ok = raw.(base.BasePlugin); !ok {
		return fail(atStage("dispense base", fmt.Errorf("dispensed %T, not a base plugin", raw)))
	}
	if _, s.api, err = pluginInfo(s.base); err != nil {
		return fail(err)
	}
	if s.spec, err = configSchema(s.base); err != nil {
		return fail(err)
	}
	if raw, err = p.dispense(base.PluginTypeDevice); err != nil {
		return fail(err)
	}
	if s.dev, ok = raw.(device.DevicePlugin); !ok {
		return fail(atStage("dispense device", fmt.Errorf("dispensed %T, not a device plugin", raw)))
	}
	return s, nil
}

func (s *started) stop() { emit("shutdown", s.proc.shutdown()) }

// configure sends one config the agent's way and returns the payload sent; a
// refusal on either side is an error here (the commands that call it need a
// configured plugin).
func (s *started) configure(src configSource, name string, agent *base.AgentConfig) ([]byte, error) {
	data, ok, err := src.prepare(s.spec, name, 1)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, atStage("agent_config", fmt.Errorf("the agent refuses this config (see the config event)"))
	}
	return data, atStage("set_config", setConfig(s.base, data, s.api, agent, 1))
}

// configFlags are the flags of the commands that configure the plugin from
// an HCL file; block gives the plugin block name to read from it.
type configFlags struct {
	path, name *string
	o          *launchOpts
}

// newConfiguredFlags gives a command that launches and configures the plugin its
// flags: the launch flags (newFlags) and the config flags (newConfigFlags).
func newConfiguredFlags(name string) (*flag.FlagSet, *launchOpts, configFlags) {
	fs, o := newFlags(name)
	return fs, o, newConfigFlags(fs, o)
}

func newConfigFlags(fs *flag.FlagSet, o *launchOpts) configFlags {
	return configFlags{
		path: fs.String("config", "", "HCL file: agent form (plugin blocks) or launcher form (a config block)"),
		name: fs.String("name", "", "plugin block name to use from an agent file (default: the plugin's file name)"),
		o:    o,
	}
}

func (c configFlags) block() string {
	if *c.name != "" {
		return *c.name
	}
	return filepath.Base(c.o.plugin)
}

// parseAndStart parses the command's flags, then startConfigured.
func parseAndStart(fs *flag.FlagSet, c configFlags, args []string) (*started, []byte, error) {
	if err := parseFlags(fs, c.o, args); err != nil {
		return nil, nil, err
	}
	return startConfigured(c)
}

// startConfigured launches the plugin and sends it the HCL config with the
// client's AgentConfig, as the device manager does; stop it with s.stop().
func startConfigured(c configFlags) (*started, []byte, error) {
	s, err := start(c.o)
	if err != nil {
		return nil, nil, err
	}
	data, err := s.configure(configSource{hclPath: *c.path}, c.block(), agentConfig())
	if err != nil {
		s.stop()
		return nil, nil, err
	}
	return s, data, nil
}

// reserveAll calls Reserve once per entry (comma-separated IDs; "" = none).
func reserveAll(dev device.DevicePlugin, reserves []string) {
	for _, r := range reserves {
		ids := []string{}
		if r != "" {
			ids = strings.Split(r, ",")
		}
		res, err := dev.Reserve(ids)
		emit("reserve", fields{"ids": ids, "reservation": reservationJSON(res), "error": errString(err)})
	}
}

func runInfo(args []string) error {
	fs, o := newFlags("info")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	p, err := launch(o, false)
	if err != nil {
		return err
	}
	defer func() { emit("shutdown", p.shutdown()) }()
	raw, err := p.dispense(base.PluginTypeBase)
	if err != nil {
		return err
	}
	b, ok := raw.(base.BasePlugin)
	if !ok {
		return atStage("dispense base", fmt.Errorf("dispensed %T, not a base plugin", raw))
	}
	if _, _, err := pluginInfo(b); err != nil {
		return err
	}
	_, err = configSchema(b)
	return err
}

func runSession(args []string) error {
	fs, o, cf := newConfiguredFlags("session")
	rawB64 := fs.String("raw-config-msgpack-b64", "", "send these msgpack bytes to SetConfig instead of an encoded HCL config")
	noAgent := fs.Bool("no-agent-config", false, "send SetConfig without the client's AgentConfig (as the loader's validation does)")
	fingerprints := fs.Int("fingerprints", 1, "fingerprint responses to wait for")
	fpWait := fs.Duration("fingerprint-wait", 0, "keep the fingerprint stream open this long after the responses waited for, printing any more")
	nstats := fs.Int("stats", 0, "stats responses to wait for and print")
	nstreams := fs.Int("stats-streams", 1, "Stats streams to open at the interval, one after another; with more than one, each answer names its \"stream\" (0, 1, ...)")
	interval := fs.Duration("interval", time.Second, "stats collection interval sent to the plugin")
	var reserves listFlag
	fs.Var(&reserves, "reserve", "comma-separated device IDs to Reserve (repeatable; empty string: no IDs)")
	reserveFirst := fs.Int("reserve-first", 0, "also Reserve the first N device IDs of the first fingerprinted group")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	src := configSource{hclPath: *cf.path}
	if *rawB64 != "" {
		raws, err := rawConfigs([]string{*rawB64})
		if err != nil {
			return err
		}
		src = raws[0]
	}

	s, err := start(o)
	if err != nil {
		return err
	}
	defer s.stop()
	agent := agentConfig()
	if *noAgent {
		agent = nil
	}
	if _, err := s.configure(src, cf.block(), agent); err != nil {
		return err
	}

	statsLimit := int64(-1)
	if *nstats > 0 {
		statsLimit = int64(*nstats)
	}
	// Like the device manager: fingerprint first, stats once devices are known.
	st, err := openStreams(s.dev, *interval, -1, nil, false)
	if err != nil {
		return err
	}
	if err := st.fp.waitCount(int64(*fingerprints), o.timeout); err != nil {
		st.close(o.timeout)
		return atStage("fingerprint", err)
	}
	if *fpWait > 0 {
		time.Sleep(*fpWait)
	}
	if fpErrs := st.fp.errs(); len(fpErrs) > 0 {
		emit("streams_closed", st.close(o.timeout))
		return atStage("fingerprint", fmt.Errorf("fingerprint stream failed: %s", fpErrs[0]))
	}
	if statsLimit > 0 {
		var all []*watcher
		for i := 0; i < max(1, *nstreams); i++ {
			sch, err := s.dev.Stats(st.ctx, *interval)
			if err != nil {
				return atStage("stats", err)
			}
			var tag fields
			if *nstreams > 1 {
				tag = fields{"stream": i}
			}
			all = append(all, watchStats(sch, tag, statsLimit, false))
		}
		st.st = all[0]
		for _, w := range all {
			if err := w.waitCount(statsLimit, o.timeout+time.Duration(statsLimit)*(*interval)); err != nil {
				emit("streams_closed", st.close(o.timeout))
				return atStage("stats", err)
			}
		}
	}

	if *reserveFirst > 0 {
		groups := st.fp.lastGroups()
		if len(groups) == 0 || len(groups[0].Devices) < *reserveFirst {
			emit("streams_closed", st.close(o.timeout))
			return atStage("reserve", fmt.Errorf("--reserve-first %d: the first group has fewer devices", *reserveFirst))
		}
		var ids []string
		for _, d := range groups[0].Devices[:*reserveFirst] {
			ids = append(ids, d.ID)
		}
		reserves = append(reserves, strings.Join(ids, ","))
	}
	reserveAll(s.dev, reserves)
	emit("streams_closed", st.close(o.timeout))
	return nil
}

func runConfigs(args []string) error {
	fs, o, cf := newConfiguredFlags("configs")
	var steps listFlag
	fs.Var(&steps, "step", "hcl:PATH (encode as the agent does, then SetConfig), msgpack:BASE64 (SetConfig with these bytes), "+
		"probe (PluginInfo and the first fingerprint), stats:N (Fingerprint and Stats open until N stats answers), "+
		"reserve:N (Reserve the first N devices of the last fingerprint seen) or wait:PATH (until PATH exists); repeatable, run in order")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	if len(steps) == 0 {
		return usageError{"no --step given"}
	}
	if *cf.path != "" {
		return usageError{"configs takes its configs as --step hcl:PATH, not --config"}
	}
	s, err := start(o)
	if err != nil {
		return err
	}
	defer s.stop()
	agent := agentConfig()
	var seen []*device.DeviceGroup
	for i, step := range steps {
		if done, err := s.runStep(i+1, step, &seen, o.timeout); done || err != nil {
			if err != nil {
				return err
			}
			continue
		}
		src, probe, err := parseStep(step)
		if err != nil {
			return err
		}
		if probe {
			if groups := s.probe(i+1, o.timeout); groups != nil {
				seen = groups
			}
			continue
		}
		data, ok, err := src.prepare(s.spec, cf.block(), i+1)
		if err != nil {
			return err
		}
		if ok {
			_ = setConfig(s.base, data, s.api, agent, i+1)
		}
	}
	return nil
}

// runStep runs the configs steps that are not configs: stats:N, reserve:N and
// wait:PATH (the test does something to the running plugin meanwhile, e.g.
// upgrades its package, then creates PATH). done is false for other steps.
func (s *started) runStep(step int, spec string, seen *[]*device.DeviceGroup, timeout time.Duration) (bool, error) {
	kind, arg, _ := strings.Cut(spec, ":")
	switch kind {
	case "wait":
		start := time.Now()
		for {
			if _, err := os.Stat(arg); err == nil {
				emit("wait", fields{"step": step, "path": arg, "waited_ms": millis(time.Since(start))})
				return true, nil
			}
			if time.Since(start) > timeout {
				return true, atStage("wait", fmt.Errorf("step %d: %s did not appear within %s", step, arg, timeout))
			}
			time.Sleep(20 * time.Millisecond)
		}
	case "stats", "reserve":
		n, err := strconv.Atoi(arg)
		if err != nil || n < 1 {
			return true, usageError{fmt.Sprintf("step %q: want %s:N with N >= 1", spec, kind)}
		}
		if kind == "reserve" {
			var ids []string
			for _, g := range *seen {
				for _, d := range g.Devices {
					if len(ids) < n {
						ids = append(ids, d.ID)
					}
				}
			}
			if len(ids) < n {
				return true, atStage("reserve", fmt.Errorf("step %d: %d devices seen, %d asked for", step, len(ids), n))
			}
			reserveAll(s.dev, []string{strings.Join(ids, ",")})
			return true, nil
		}
		ev := fields{"step": step, "fingerprint_error": nil, "stats_error": nil}
		st, err := openStreams(s.dev, 100*time.Millisecond, int64(n), nil, true)
		if err != nil {
			return true, err
		}
		if err := st.st.waitCount(int64(n), timeout); err != nil {
			ev["stats_error"] = err.Error()
		} else if errs := st.st.errs(); len(errs) > 0 {
			ev["stats_error"] = errs[0]
		}
		if errs := st.fp.errs(); len(errs) > 0 {
			ev["fingerprint_error"] = errs[0]
		} else if groups := st.fp.lastGroups(); groups != nil {
			*seen = groups
		}
		ev["stats"] = st.st.count.Load()
		st.close(timeout)
		emit("stats_step", ev)
		return true, nil
	}
	return false, nil
}

// probe shows the plugin still serves and which config is in force: its info
// (with the version it reports) and its first fingerprint response (or the
// error the stream answers); returns the groups of that response.
func (s *started) probe(step int, timeout time.Duration) []*device.DeviceGroup {
	ev := fields{"step": step, "info_error": nil, "fingerprint_error": nil, "groups": nil, "disabled": false,
		"plugin_version": nil}
	if info, err := s.base.PluginInfo(); err != nil {
		ev["info_error"] = err.Error()
	} else {
		ev["plugin_version"] = info.PluginVersion
	}
	st, err := openStreams(s.dev, time.Second, -1, nil, true)
	if err != nil {
		ev["fingerprint_error"] = err.Error()
		emit("probe", ev)
		return nil
	}
	var groups []*device.DeviceGroup
	if err := st.fp.waitCount(1, timeout); err != nil {
		ev["fingerprint_error"] = err.Error()
	} else if errs := st.fp.errs(); len(errs) > 0 {
		ev["fingerprint_error"] = errs[0]
		ev["disabled"] = strings.Contains(errs[0], device.ErrPluginDisabled.Error())
	} else {
		groups = st.fp.lastGroups()
		ev["groups"] = groupsJSON(groups)
	}
	st.close(timeout)
	emit("probe", ev)
	return groups
}

func runStreams(args []string) error {
	fs, o, cf := newConfiguredFlags("streams")
	cycles := fs.Int("cycles", 5, "open/cancel cycles")
	perCycle := fs.Int("stats-per-cycle", 2, "stats responses to wait for in each cycle")
	interval := fs.Duration("interval", 100*time.Millisecond, "stats collection interval")
	s, _, err := parseAndStart(fs, cf, args)
	if err != nil {
		return err
	}
	defer s.stop()
	wait := o.timeout + time.Duration(*perCycle)*(*interval)
	for n := 1; n <= *cycles; n++ {
		st, err := openStreams(s.dev, *interval, int64(*perCycle), fields{"cycle": n}, true)
		if err != nil {
			return err
		}
		ev := fields{"cycle": n, "fingerprint_error": nil, "stats_error": nil}
		if err := st.fp.waitCount(1, o.timeout); err != nil {
			ev["fingerprint_error"] = err.Error()
		}
		if err := st.st.waitCount(int64(*perCycle), wait); err != nil {
			ev["stats_error"] = err.Error()
		}
		if errs := st.fp.errs(); len(errs) > 0 {
			ev["fingerprint_error"] = errs[0]
		}
		if errs := st.st.errs(); len(errs) > 0 {
			ev["stats_error"] = errs[0]
		}
		for k, v := range st.close(o.timeout) {
			ev[k] = v
		}
		ev["fingerprints"], ev["stats"] = st.fp.count.Load(), st.st.count.Load()
		ev["plugin_exited"] = s.proc.client.Exited()
		emit("cycle", ev)
	}
	s.probe(*cycles+1, o.timeout)
	return nil
}
