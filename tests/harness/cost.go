package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// runCost measures what a configured plugin costs the node, phase by phase,
// as the device manager would use it: first with only the Fingerprint
// stream open (idle), then with a Stats stream at each --interval in turn.
// Each phase starts --settle after its stream's first answer (startup work
// done; a Stats phase at the next half beat of its interval after that) and
// lasts --window; the plugin process is sampled from /proc at both ends, so
// its CPU is counted over exactly the window.
//
// Events: launch, info, schema, config, set_config (as session), then
// "first_fingerprint" (ms since launch, devices), one "cost" event per phase
// (phase "idle" or "stats", interval_ms, window_s, cpu_ms_per_s from the
// threads' schedstat run time, cpu_ms_per_s_ticks from utime+stime,
// responses and responses_per_s, wakes_per_s: the threads' context switches,
// voluntary and involuntary, per second, threads, rss_kib, hwm_kib at the
// window's end, top_threads: the busiest threads by name, each with its
// cpu_ms_per_s and wakes_per_s), then shutdown.
func runCost(args []string) error {
	fs, o, cf := newConfiguredFlags("cost")
	window := fs.Duration("window", 15*time.Second, "length of each measured phase")
	settle := fs.Duration("settle", 2*time.Second, "wait after a phase's first answer before measuring")
	idle := fs.Bool("idle", true, "measure the idle phase (Fingerprint open, no Stats)")
	var ivs durationsFlag
	fs.Var(&ivs, "interval", "a Stats interval to measure (repeatable, in order)")
	if err := parseFlags(fs, o, args); err != nil {
		return err
	}
	if *window <= 0 || *settle < 0 {
		return usageError{"--window must be positive and --settle not negative"}
	}
	t0 := time.Now()
	s, _, err := startConfigured(cf)
	if err != nil {
		return err
	}
	defer s.stop()
	pid := s.proc.cmd.Process.Pid

	st, err := openStreams(s.dev, time.Second, -1, nil, true)
	if err != nil {
		return err
	}
	defer st.close(o.timeout)
	if err := st.fp.waitCount(1, o.timeout); err != nil {
		return atStage("fingerprint", err)
	}
	if errs := st.fp.errs(); len(errs) > 0 {
		return atStage("fingerprint", fmt.Errorf("fingerprint stream failed: %s", errs[0]))
	}
	devices := 0
	for _, g := range st.fp.lastGroups() {
		devices += len(g.Devices)
	}
	emit("first_fingerprint", fields{"ms": millis(time.Since(t0)), "devices": devices, "pid": pid})

	measure := func(phase string, interval time.Duration, w *watcher) error {
		// Called as the stream's first answer arrives. A Stats window starts
		// half an interval off the answers' beat, so both its ends fall between
		// answers (for a --window that is a whole number of intervals): it holds
		// whole answers, each with all the CPU it took, and counts
		// window/interval of them, not one more or one less.
		wait := *settle
		if interval > 0 {
			wait = (*settle+interval-1)/interval*interval + interval/2
		}
		time.Sleep(wait)
		before, err := sampleProc(pid)
		if err != nil {
			return atStage("sample", err)
		}
		n0 := w.count.Load()
		time.Sleep(*window)
		after, err := sampleProc(pid)
		if err != nil {
			return atStage("sample", err)
		}
		if errs := w.errs(); len(errs) > 0 {
			return atStage(phase, fmt.Errorf("stream failed: %s", errs[0]))
		}
		ev := after.since(before)
		ev["phase"], ev["devices"], ev["window_s"] = phase, devices, window.Seconds()
		ev["interval_ms"] = nil
		if interval > 0 {
			ev["interval_ms"] = millis(interval)
		}
		n := w.count.Load() - n0
		ev["responses"], ev["responses_per_s"] = n, float64(n)/after.at.Sub(before.at).Seconds()
		emit("cost", ev)
		return nil
	}
	if *idle {
		if err := measure("idle", 0, st.fp); err != nil {
			return err
		}
	}
	for _, iv := range ivs {
		ctx, cancel := context.WithCancel(st.ctx)
		ch, err := s.dev.Stats(ctx, iv)
		if err != nil {
			cancel()
			return atStage("stats", err)
		}
		w := watchStats(ch, nil, -1, true)
		if err := w.waitCount(1, o.timeout+iv); err != nil {
			cancel()
			return atStage("stats", err)
		}
		err = measure("stats", iv, w)
		w.cancelled.Store(true)
		cancel()
		if !w.waitClosed(o.timeout) {
			return atStage("stats", fmt.Errorf("stats stream at %s not closed within %s of the cancel", iv, o.timeout))
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// durationsFlag is a repeatable positive duration flag.
type durationsFlag []time.Duration

func (d *durationsFlag) String() string { return fmt.Sprint([]time.Duration(*d)) }
func (d *durationsFlag) Set(v string) error {
	iv, err := time.ParseDuration(v)
	if err != nil || iv <= 0 {
		return fmt.Errorf("%q: want a positive duration", v)
	}
	*d = append(*d, iv)
	return nil
}

// procSample is one reading of a process from /proc.
type procSample struct {
	at      time.Time
	runNS   map[string]int64  // per live thread: time on CPU (schedstat), ns
	wakes   map[string]int64  // per live thread: context switches, voluntary and involuntary
	comm    map[string]string // per live thread: its name
	ticks   int64             // utime+stime of the whole process, exited threads included
	threads int
	rssKiB  int64
	hwmKiB  int64
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go's linux ports
// run on (sysconf(_SC_CLK_TCK) is not reachable without cgo).
const clockTicks = 100

func sampleProc(pid int) (procSample, error) {
	p := procSample{at: time.Now(), runNS: map[string]int64{}, wakes: map[string]int64{}, comm: map[string]string{}}
	dir := fmt.Sprintf("/proc/%d", pid)
	tasks, err := filepath.Glob(dir + "/task/*/schedstat")
	if err != nil {
		return p, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread exited meanwhile
		}
		if f := strings.Fields(string(b)); len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			tid := filepath.Base(filepath.Dir(t))
			p.runNS[tid] = ns
			if c, err := os.ReadFile(filepath.Join(filepath.Dir(t), "comm")); err == nil {
				p.comm[tid] = strings.TrimSpace(string(c))
			}
			if st, err := os.ReadFile(filepath.Join(filepath.Dir(t), "status")); err == nil {
				p.wakes[tid] = ctxtSwitches(string(st))
			}
		}
	}
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return p, err
	}
	// Fields after the parenthesised command name, which may hold spaces.
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(rest) < 13 {
		return p, fmt.Errorf("%s/stat: %d fields", dir, len(rest))
	}
	utime, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	p.ticks = utime + stime
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.Fields(v + " 0")[0], 10, 64)
		switch k {
		case "Threads":
			p.threads = int(n)
		case "VmRSS":
			p.rssKiB = n
		case "VmHWM":
			p.hwmKiB = n
		}
	}
	return p, nil
}

// ctxtSwitches is a thread's voluntary plus involuntary context switches, from
// its /proc status: each is one time the thread left the CPU, so one wake-up
// (a thread that sleeps and is woken, or one the scheduler preempts).
func ctxtSwitches(status string) int64 {
	var n int64
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
			c, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			n += c
		}
	}
	return n
}

// since is the cost between two samples: CPU per second of wall time (a
// thread started in between counts from zero; one that exited in between is
// missing from the schedstat figure but not from the ticks one), and the
// process's size at the later one.
func (p procSample) since(before procSample) fields {
	secs := p.at.Sub(before.at).Seconds()
	var run, wakes int64
	type threadCPU struct {
		tid, comm string
		ns, wakes int64
	}
	var per []threadCPU
	for tid, ns := range p.runNS {
		w := p.wakes[tid] - before.wakes[tid]
		run += ns - before.runNS[tid]
		wakes += w
		per = append(per, threadCPU{tid, p.comm[tid], ns - before.runNS[tid], w})
	}
	// The busiest threads, to see where an idle plugin spends its CPU and
	// which threads wake for each Stats answer.
	sort.Slice(per, func(i, j int) bool {
		if per[i].ns != per[j].ns {
			return per[i].ns > per[j].ns
		}
		return per[i].wakes > per[j].wakes
	})
	top := []fields{}
	for _, t := range per[:min(len(per), 16)] {
		if t.ns > 0 || t.wakes > 0 {
			top = append(top, fields{"tid": t.tid, "comm": t.comm, "cpu_ms_per_s": float64(t.ns) / 1e6 / secs,
				"wakes_per_s": float64(t.wakes) / secs})
		}
	}
	return fields{
		"top_threads":        top,
		"cpu_ms_per_s":       float64(run) / 1e6 / secs,
		"wakes_per_s":        float64(wakes) / secs,
		"cpu_ms_per_s_ticks": float64(p.ticks-before.ticks) * 1000 / clockTicks / secs,
		"threads":            p.threads, "rss_kib": p.rssKiB, "hwm_kib": p.hwmKiB,
	}
}
