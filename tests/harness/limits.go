package main

import (
	"context"
	"strings"
	"time"
)

// runLimits opens many Fingerprint and Stats streams through Nomad's device
// client, each on its own context as separate device managers would, then
// times every unary call while they are all open: the plugin's stream bounds
// must refuse the excess (RESOURCE_EXHAUSTED) and leave unary calls answered.
func runLimits(args []string) error {
	fs, o, cf := newConfiguredFlags("limits")
	nfp := fs.Int("fingerprints", 0, "Fingerprint streams to open")
	nst := fs.Int("stats", 0, "Stats streams to open")
	interval := fs.Duration("interval", time.Second, "stats collection interval")
	within := fs.Duration("within", 5*time.Second, "how long each unary call may take to be answered")
	reserve := fs.String("reserve", "", "comma-separated device IDs for the timed Reserve")
	s, data, err := parseAndStart(fs, cf, args)
	if err != nil {
		return err
	}
	defer s.stop()
	agent := agentConfig()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var fps, sts []*watcher
	for i := 0; i < *nfp; i++ {
		ch, err := s.dev.Fingerprint(ctx)
		if err != nil {
			return atStage("fingerprint", err)
		}
		fps = append(fps, watchFingerprint(ch, nil, true))
	}
	for i := 0; i < *nst; i++ {
		ch, err := s.dev.Stats(ctx, *interval)
		if err != nil {
			return atStage("stats", err)
		}
		sts = append(sts, watchStats(ch, nil, -1, true))
	}
	// Every stream answers: its first response, or its refusal.
	fpSum := summarize(fps, 1, o.timeout)
	stSum := summarize(sts, 1, o.timeout)

	timed := func(call string, f func() error) {
		done := make(chan error, 1)
		begin := time.Now()
		go func() { done <- f() }()
		ev := fields{"call": call, "answered": false, "error": nil, "ms": nil}
		select {
		case err := <-done:
			ev["answered"], ev["error"], ev["ms"] = true, errString(err), millis(time.Since(begin))
		case <-time.After(*within):
		}
		emit("unary", ev)
	}
	timed("PluginInfo", func() error { _, err := s.base.PluginInfo(); return err })
	timed("ConfigSchema", func() error { _, err := s.base.ConfigSchema(); return err })
	timed("SetConfig", func() error { return setConfig(s.base, data, s.api, agent, 2) })
	timed("Reserve", func() error {
		ids := []string{}
		if *reserve != "" {
			ids = strings.Split(*reserve, ",")
		}
		_, err := s.dev.Reserve(ids)
		return err
	})
	timed("health", func() error { return s.proc.rpc.Ping() })

	// The streams that were accepted keep answering meanwhile.
	var flowing []*watcher
	for _, w := range sts {
		if len(w.errs()) == 0 {
			flowing = append(flowing, w)
		}
	}
	stSum["still_flowing"] = summarize(flowing, 2, o.timeout+*interval)["answered"]
	for _, w := range append(fps, sts...) {
		w.cancelled.Store(true)
	}
	cancel()
	closed := 0
	for _, w := range append(fps, sts...) {
		if w.waitClosed(o.timeout) {
			closed++
		}
	}
	emit("limits", fields{"fingerprint": fpSum, "stats": stSum, "closed": closed,
		"plugin_exited": s.proc.client.Exited()})
	return nil
}

// summarize waits (bounded) for n responses on each stream and counts how
// they answered: accepted (n responses, no error), refused (ResourceExhausted),
// other errors, or unanswered (fewer than n responses and no error by the
// deadline: not counted as accepted, which it may never be).
func summarize(ws []*watcher, n int64, timeout time.Duration) fields {
	answered, accepted, refused, unanswered := 0, 0, 0, 0
	others, refusal := []string{}, ""
	deadline := time.Now().Add(timeout)
	for _, w := range ws {
		ok := w.waitCount(n, time.Until(deadline)) == nil
		if ok {
			answered++
		}
		errs := w.errs()
		switch {
		case len(errs) == 0 && !ok:
			unanswered++
		case len(errs) == 0:
			accepted++
		case strings.Contains(errs[0], "ResourceExhausted"):
			refused++
			refusal = errs[0]
		default:
			others = append(others, errs[0])
		}
	}
	return fields{"opened": len(ws), "answered": answered, "accepted": accepted, "refused": refused,
		"unanswered": unanswered, "refusal": refusal, "other_errors": others}
}
