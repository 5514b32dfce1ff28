package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/nomad/plugins/device"
)

// timeline: one plugin process watched as the device manager watches it
// (Fingerprint open for the whole run, Stats opened after the first
// fingerprint), every response printed with its time in ms since launch,
// until a list of steps has been met in order, each within a bounded wait.
// Then optional Reserve calls (timed), then a graceful Shutdown (timed) or
// a SIGKILL.
//
// Steps (--until, repeatable, in order; an optional "@DURATION" suffix
// replaces --within for that step):
//
//	devices:N                  a fingerprint response with exactly N devices in all
//	healthy:SEL                a fingerprint response where SEL is healthy
//	unhealthy:SEL[:TEXT]       ... where SEL is unhealthy, its description containing TEXT
//	log:TEXT                   a plugin log line whose message contains TEXT
//	stats:SEL                  a stats response (no error) with instance stats for SEL
//	ticks:N                    N more stats responses (no error) after the previous step
//	copy:SRC:DST               an action: copy SRC to DST (atomically, by rename)
//
// SEL is a device ID, "any" (some device) or "all" (every device, at least
// one); for stats:, "all" means every device of the last fingerprint.
// A step's wait starts when the previous step was met. A state step
// (devices, healthy, unhealthy, stats) is met once it holds after the
// previous step: by a later answer, or by the stream's last answer when that
// already holds; log and ticks count only what arrives after the previous
// step. One answer may meet several steps in a row.
//
// Events, each with "ms" since the plugin was launched: set_config_call,
// fingerprint_call, fingerprint (seq, groups, devices, unhealthy), stats_call,
// stats (seq, groups), log (with --logs), step (index, spec, met_ms,
// waited_ms, by: "fingerprint#N", "stats#N", "log" or "action"), action,
// step_timeout, fingerprint_end / stats_end (the client closed the stream),
// reserve (ids, took_ms, reservation, error), streams (whether each stream
// was still open before the harness ended it), shutdown (mode "shutdown" or
// "sigkill", kill_ms, graceful, signal, exit_code), timeline (the met steps).
// Exit 1 with an "error" event (stage "until" or "fingerprint") when a step
// is not met in time or the plugin ends the Fingerprint stream before it; the
// shutdown still happens and is reported.
func runTimeline(args []string) error {
	fs, o, cf := newConfiguredFlags("timeline")
	withStats := fs.Bool("stats", false, "open Stats after the first fingerprint response, as the device manager does")
	interval := fs.Duration("interval", time.Second, "stats collection interval sent to the plugin")
	within := fs.Duration("within", 0, "default bounded wait of each step, counted from the previous step (default: --timeout)")
	var untils, reserves listFlag
	fs.Var(&untils, "until", "a step (see the command's doc), repeatable, met in order")
	fs.Var(&reserves, "reserve", "after the steps: Reserve these comma-separated device IDs (repeatable; empty string: no IDs)")
	kill := fs.Bool("kill", false, "end with SIGKILL to the plugin (a crash), not Shutdown")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	if *within <= 0 {
		*within = o.timeout
	}
	steps := make([]step, 0, len(untils))
	for _, u := range untils {
		st, err := parseStep2(u, *within)
		if err != nil {
			return err
		}
		steps = append(steps, st)
	}

	// The harness prints the log lines itself, with their arrival time.
	printLogs := o.logs
	o.logs = false
	t0 := time.Now()
	s, err := start(o)
	if err != nil {
		return err
	}
	tl := &timeline{t0: t0, steps: steps, changed: make(chan struct{}, 1), printLogs: printLogs, met: []metStep{}}
	stopLogs := tl.pollLogs(s.proc.logs)
	finished := false
	defer func() {
		if !finished {
			stopLogs()
			s.stop()
		}
	}()
	// NVML may be initialised from SetConfig on: the earliest the simulated
	// driver's clock can have started.
	emit("set_config_call", fields{"ms": tl.ms()})
	if _, err := s.configure(configSource{hclPath: *cf.path}, cf.block(), agentConfig()); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	emit("fingerprint_call", fields{"ms": tl.ms()})
	fch, err := s.dev.Fingerprint(ctx)
	if err != nil {
		return atStage("fingerprint", err)
	}
	fpDone := make(chan struct{})
	statsDone := make(chan struct{})
	var statsOpened sync.Once
	var statsStarted bool // set inside statsOpened only
	openStats := func() {
		statsOpened.Do(func() {
			if !*withStats {
				close(statsDone)
				return
			}
			statsStarted = true
			emit("stats_call", fields{"ms": tl.ms()})
			sch, err := s.dev.Stats(ctx, *interval)
			if err != nil {
				emit("stats", fields{"seq": 0, "ms": tl.ms(), "error": err.Error()})
				close(statsDone)
				return
			}
			go tl.readStats(sch, statsDone)
		})
	}
	go tl.readFingerprints(fch, fpDone, openStats)

	stepErr := tl.run(fpDone, s.proc.logs)

	if stepErr == nil {
		for _, r := range reserves {
			ids := []string{}
			if r != "" {
				ids = strings.Split(r, ",")
			}
			at := time.Now()
			res, err := s.dev.Reserve(ids)
			emit("reserve", fields{"ids": ids, "ms": millis(at.Sub(t0)), "took_ms": millis(time.Since(at)),
				"reservation": reservationJSON(res), "error": errString(err)})
		}
	}

	// Whether the plugin itself ended a stream (Nomad treats that as final).
	// A Stats stream never opened (no valid fingerprint came) counts as done.
	statsOpened.Do(func() { close(statsDone) })
	streams := fields{"ms": tl.ms(), "fingerprint_open": !isClosed(fpDone),
		"stats_opened": statsStarted, "stats_open": statsStarted && !isClosed(statsDone)}
	tl.mu.Lock()
	streams["fingerprints"], streams["stats_responses"] = tl.fpSeq, tl.stSeq
	tl.mu.Unlock()
	emit("streams", streams)

	finished = true
	if *kill {
		// A crash: no Shutdown, no stream cancel first.
		at := time.Now()
		killErr := s.proc.cmd.Process.Signal(syscall.SIGKILL)
		out := s.proc.shutdown()
		out["mode"], out["ms"], out["signal_error"] = "sigkill", millis(at.Sub(t0)), errString(killErr)
		stopLogs()
		emit("shutdown", out)
	} else {
		// The device manager cancels its streams, then kills the plugin
		// (go-plugin: Shutdown RPC, up to 2 s for the process to exit).
		at := time.Now()
		cancel()
		fpClosed := waitDone(fpDone, o.timeout)
		stClosed := waitDone(statsDone, o.timeout)
		closeMS := millis(time.Since(at))
		at = time.Now()
		out := s.proc.shutdown()
		out["mode"], out["ms"] = "shutdown", millis(at.Sub(t0))
		out["streams_closed"] = fpClosed && stClosed
		out["streams_close_ms"] = closeMS
		stopLogs()
		emit("shutdown", out)
	}
	tl.mu.Lock()
	emit("timeline", fields{"steps": tl.met, "met": len(tl.met), "of": len(tl.steps)})
	tl.mu.Unlock()
	return stepErr
}

type step struct {
	spec   string
	kind   string
	sel    string
	text   string
	n      int
	src    string
	dst    string
	within time.Duration
}

func (st step) action() bool { return st.kind == "copy" }

// parseStep2 reads one --until step (parseStep is the configs command's).
func parseStep2(spec string, within time.Duration) (step, error) {
	st := step{spec: spec, within: within}
	body := spec
	if at := strings.LastIndex(spec, "@"); at >= 0 {
		if d, err := time.ParseDuration(spec[at+1:]); err == nil && d > 0 {
			st.within, body = d, spec[:at]
		}
	}
	kind, rest, _ := strings.Cut(body, ":")
	st.kind = kind
	bad := func(why string) (step, error) {
		return step{}, usageError{fmt.Sprintf("--until %q: %s", spec, why)}
	}
	switch kind {
	case "devices", "ticks":
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return bad("want " + kind + ":N")
		}
		st.n = n
	case "healthy", "stats":
		if rest == "" {
			return bad("want " + kind + ":ID|any|all")
		}
		st.sel = rest
	case "unhealthy":
		sel, text, _ := strings.Cut(rest, ":")
		if sel == "" {
			return bad("want unhealthy:ID|any|all[:TEXT]")
		}
		st.sel, st.text = sel, text
	case "log":
		if rest == "" {
			return bad("want log:TEXT")
		}
		st.text = rest
	case "copy":
		src, dst, ok := strings.Cut(rest, ":")
		if !ok || src == "" || dst == "" {
			return bad("want copy:SRC:DST")
		}
		st.src, st.dst = src, dst
	default:
		return bad("unknown step kind (devices, healthy, unhealthy, log, stats, ticks, copy)")
	}
	return st, nil
}

type metStep struct {
	Index    int     `json:"index"`
	Spec     string  `json:"spec"`
	MetMS    float64 `json:"met_ms"`
	WaitedMS float64 `json:"waited_ms"`
	By       string  `json:"by"`
}

// timeline holds the run's clock, the steps and what the streams last said.
// Every response is printed and matched under mu, so the printed order is
// the order the steps saw.
type timeline struct {
	t0        time.Time
	steps     []step
	changed   chan struct{}
	printLogs bool

	mu           sync.Mutex
	next         int // the step being waited for
	ticks        int // stats responses counted for a ticks step
	lastMet      time.Time
	met          []metStep
	groups       []*device.DeviceGroup // the last fingerprint answer without error
	lastFPSeq    int                   // its seq; 0: none yet
	lastStats    map[string]bool       // instance IDs of the last stats answer without error
	lastStatsSeq int
	fpSeq        int
	stSeq        int
	logsSeen     int
}

func (tl *timeline) ms() float64 { return millis(time.Since(tl.t0)) }

func (tl *timeline) signal() {
	select {
	case tl.changed <- struct{}{}:
	default:
	}
}

// advance records that the current step was met; the caller holds mu.
func (tl *timeline) advance(by string) {
	now := time.Now()
	since := tl.lastMet
	if since.IsZero() {
		since = tl.t0
	}
	m := metStep{Index: tl.next, Spec: tl.steps[tl.next].spec, MetMS: millis(now.Sub(tl.t0)),
		WaitedMS: millis(now.Sub(since)), By: by}
	tl.met = append(tl.met, m)
	emit("step", fields{"index": m.Index, "spec": m.Spec, "met_ms": m.MetMS, "waited_ms": m.WaitedMS, "by": m.By})
	tl.next++
	tl.ticks = 0
	tl.lastMet = now
	tl.signal()
}

// feed matches one response against the steps from the current one on;
// kind is "fingerprint", "stats" or "log". The caller holds mu.
//
// State steps (devices, healthy, unhealthy, stats) are checked against the
// last answer of their stream, so a step becomes met as soon as it holds
// after the previous one, whichever stream met that one (answers are sent
// only on change, and a log line is read up to 5 ms after it was written).
// log and ticks steps count only what arrives while they are current; one
// log line or stats answer meets at most one of them.
func (tl *timeline) feed(kind string, msg string) {
	first := true
	for tl.next < len(tl.steps) {
		st := tl.steps[tl.next]
		if st.action() {
			return // the main loop performs it
		}
		var ok bool
		var by string
		switch st.kind {
		case "ticks":
			if kind == "stats" && first {
				tl.ticks++
			}
			ok, by = tl.ticks >= st.n, fmt.Sprintf("stats#%d", tl.stSeq)
		case "log":
			ok, by = first && kind == "log" && strings.Contains(msg, st.text), "log"
		case "stats":
			ok = tl.lastStats != nil && matchStats(st.sel, tl.lastStats, tl.groups)
			by = fmt.Sprintf("stats#%d", tl.lastStatsSeq)
		default:
			ok = tl.lastFPSeq > 0 && matchGroups(st, tl.groups)
			by = fmt.Sprintf("fingerprint#%d", tl.lastFPSeq)
		}
		first = false
		if !ok {
			return
		}
		tl.advance(by)
	}
}

func (tl *timeline) readFingerprints(ch <-chan *device.FingerprintResponse, done chan struct{}, onFirst func()) {
	defer close(done)
	defer tl.signal()
	for resp := range ch {
		if resp == nil {
			continue
		}
		tl.mu.Lock()
		tl.fpSeq++
		ev := fields{"seq": tl.fpSeq, "ms": tl.ms(), "error": errString(resp.Error)}
		if resp.Error == nil {
			tl.groups, tl.lastFPSeq = resp.Devices, tl.fpSeq
			ev["groups"] = groupsJSON(resp.Devices)
			ev["devices"], ev["unhealthy"] = deviceSummary(resp.Devices)
		}
		emit("fingerprint", ev)
		if resp.Error == nil {
			tl.feed("fingerprint", "")
		}
		tl.mu.Unlock()
		if resp.Error == nil {
			onFirst()
		}
	}
	tl.mu.Lock()
	emit("fingerprint_end", fields{"ms": tl.ms(), "after": tl.fpSeq})
	tl.mu.Unlock()
}

func (tl *timeline) readStats(ch <-chan *device.StatsResponse, done chan struct{}) {
	defer close(done)
	for resp := range ch {
		if resp == nil {
			continue
		}
		tl.mu.Lock()
		tl.stSeq++
		ev := fields{"seq": tl.stSeq, "ms": tl.ms(), "error": errString(resp.Error)}
		if resp.Error == nil {
			ev["groups"] = statsJSON(resp.Groups)
			ids := map[string]bool{}
			for _, g := range resp.Groups {
				if g == nil {
					continue
				}
				for id := range g.InstanceStats {
					ids[id] = true
				}
			}
			emit("stats", ev)
			tl.lastStats, tl.lastStatsSeq = ids, tl.stSeq
			tl.feed("stats", "")
		} else {
			emit("stats", ev)
		}
		tl.mu.Unlock()
	}
	tl.mu.Lock()
	emit("stats_end", fields{"ms": tl.ms(), "after": tl.stSeq})
	tl.mu.Unlock()
	tl.signal()
}

// pollLogs feeds the client's log lines (the plugin's relayed stderr among
// them) to the steps. logSink has no callback, so new entries are read every
// 5 ms: a log line's time is when it was read, at most 5 ms late.
func (tl *timeline) pollLogs(sink *logSink) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	drain := func() {
		sink.mu.Lock()
		fresh := append([]map[string]any{}, sink.entries[min(tl.logsSeen, len(sink.entries)):]...)
		sink.mu.Unlock()
		for _, e := range fresh {
			tl.mu.Lock()
			tl.logsSeen++
			fromPlugin := sink.fromPlugin(e)
			if tl.printLogs {
				emit("log", fields{"ms": tl.ms(), "entry": e, "from_plugin": fromPlugin})
			}
			msg, _ := e["@message"].(string)
			if fromPlugin {
				tl.feed("log", msg)
			}
			tl.mu.Unlock()
		}
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				drain()
				return
			case <-tick.C:
				drain()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(quit); <-done }) }
}

// run waits for each step in order; it returns an "until" error naming the
// first step not met in time, or a "fingerprint" error when the plugin ends
// the Fingerprint stream before a step that needs it.
func (tl *timeline) run(fpDone chan struct{}, sink *logSink) error {
	for i := range tl.steps {
		st := tl.steps[i]
		tl.mu.Lock()
		since := tl.lastMet
		if since.IsZero() {
			since = tl.t0
		}
		if st.action() && tl.next == i {
			err := copyAtomically(st.src, st.dst)
			emit("action", fields{"index": i, "spec": st.spec, "ms": tl.ms(), "error": errString(err)})
			if err != nil {
				tl.mu.Unlock()
				return atStage("until", fmt.Errorf("step %d (%s): %w", i, st.spec, err))
			}
			tl.advance("action")
			tl.feed("action", "")
		}
		tl.mu.Unlock()
		deadline := time.NewTimer(time.Until(since.Add(st.within)))
	wait:
		for {
			tl.mu.Lock()
			done, last := tl.next > i, tl.groups
			tl.mu.Unlock()
			if done {
				break wait
			}
			needsFP := st.kind == "devices" || st.kind == "healthy" || st.kind == "unhealthy" || st.kind == "stats"
			if needsFP && isClosed(fpDone) {
				deadline.Stop()
				return atStage("fingerprint", fmt.Errorf("the plugin ended the fingerprint stream before step %d (%s)", i, st.spec))
			}
			select {
			case <-tl.changed:
			case <-fpDone:
			case <-deadline.C:
				// A last look: a response may have landed just now.
				tl.mu.Lock()
				done = tl.next > i
				tl.mu.Unlock()
				if done {
					break wait
				}
				_, unhealthy := deviceSummary(last)
				emit("step_timeout", fields{"index": i, "spec": st.spec, "ms": tl.ms(), "within_ms": millis(st.within),
					"last_devices": len(flatDevices(last)), "last_unhealthy": unhealthy})
				return atStage("until", fmt.Errorf("step %d (%s) not met within %s of the previous one", i, st.spec, st.within))
			}
		}
		deadline.Stop()
	}
	return nil
}

func flatDevices(groups []*device.DeviceGroup) []*device.Device {
	var out []*device.Device
	for _, g := range groups {
		if g == nil {
			continue
		}
		for _, d := range g.Devices {
			if d != nil {
				out = append(out, d)
			}
		}
	}
	return out
}

// deviceSummary: the device count and the unhealthy devices with their reasons.
func deviceSummary(groups []*device.DeviceGroup) (int, []fields) {
	devs := flatDevices(groups)
	sick := []fields{}
	for _, d := range devs {
		if !d.Healthy {
			sick = append(sick, fields{"id": d.ID, "health_desc": d.HealthDesc})
		}
	}
	return len(devs), sick
}

func matchGroups(st step, groups []*device.DeviceGroup) bool {
	devs := flatDevices(groups)
	if st.kind == "devices" {
		return len(devs) == st.n
	}
	var want func(d *device.Device) bool
	switch st.kind {
	case "healthy":
		want = func(d *device.Device) bool { return d.Healthy }
	case "unhealthy":
		want = func(d *device.Device) bool { return !d.Healthy && strings.Contains(d.HealthDesc, st.text) }
	default:
		return false
	}
	switch st.sel {
	case "any":
		for _, d := range devs {
			if want(d) {
				return true
			}
		}
		return false
	case "all":
		for _, d := range devs {
			if !want(d) {
				return false
			}
		}
		return len(devs) > 0
	}
	for _, d := range devs {
		if d.ID == st.sel {
			return want(d)
		}
	}
	return false
}

func matchStats(sel string, ids map[string]bool, groups []*device.DeviceGroup) bool {
	switch sel {
	case "any":
		return len(ids) > 0
	case "all":
		devs := flatDevices(groups)
		for _, d := range devs {
			if !ids[d.ID] {
				return false
			}
		}
		return len(devs) > 0
	}
	return ids[sel]
}

// copyAtomically writes DST by rename, so a reader never sees half a file.
func copyAtomically(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".copy-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(info.Mode().Perm()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitDone(ch chan struct{}, timeout time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(timeout):
		return false
	}
}
