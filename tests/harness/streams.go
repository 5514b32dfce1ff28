package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/nomad/plugins/device"
)

// watcher reads one of the device client's response channels (the channels
// plugins/device/client.go fills from the gRPC stream) and emits an event
// per response as it arrives.
type watcher struct {
	got       chan struct{} // one token per response, dropped when nobody waits
	closed    chan struct{} // the client closed the channel
	count     atomic.Int64
	cancelled atomic.Bool // set before the test cancels, so the cancel error is told apart

	mu     sync.Mutex
	last   []*device.DeviceGroup
	errors []string
}

func newWatcher() *watcher {
	return &watcher{got: make(chan struct{}, 4096), closed: make(chan struct{})}
}

// response records one response that arrived before (cancelled false) or after the
// test cancelled; it returns its sequence number and whether to print it. It is
// not counted yet: see counted.
func (w *watcher) response(err error, cancelled bool, limit int64) (int64, bool) {
	n := w.count.Load() + 1 // only the watch goroutine counts
	if err != nil && !cancelled {
		w.mu.Lock()
		w.errors = append(w.errors, err.Error())
		w.mu.Unlock()
	}
	return n, limit <= 0 || n <= limit
}

// counted makes response n visible to waitCount, once its event is printed:
// a waiter that goes on to cancel then cannot change how the response was told.
func (w *watcher) counted(n int64) {
	w.count.Store(n)
	select {
	case w.got <- struct{}{}:
	default:
	}
}

func (w *watcher) errs() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string{}, w.errors...)
}

func (w *watcher) lastGroups() []*device.DeviceGroup {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}

// responseEvent is common to both streams. The error after the harness
// cancels is the client reporting its own cancellation, marked as such.
func (w *watcher) responseEvent(seq int64, start time.Time, err error, cancelled bool, tag fields) fields {
	ev := fields{"seq": seq, "ms": millis(time.Since(start)), "error": errString(err), "after_cancel": cancelled}
	if err != nil {
		ev["disabled"] = strings.Contains(err.Error(), device.ErrPluginDisabled.Error())
	}
	maps.Copy(ev, tag)
	return ev
}

func watchFingerprint(ch <-chan *device.FingerprintResponse, tag fields, quiet bool) *watcher {
	return watch(ch, "fingerprint", tag, 0, quiet, func(w *watcher, resp *device.FingerprintResponse) error {
		if resp.Error == nil {
			w.mu.Lock()
			w.last = resp.Devices
			w.mu.Unlock()
		}
		return resp.Error
	}, func(resp *device.FingerprintResponse) any { return groupsJSON(resp.Devices) })
}

func watchStats(ch <-chan *device.StatsResponse, tag fields, limit int64, quiet bool) *watcher {
	return watch(ch, "stats", tag, limit, quiet, func(_ *watcher, resp *device.StatsResponse) error { return resp.Error },
		func(resp *device.StatsResponse) any { return statsJSON(resp.Groups) })
}

// watch reads one response channel in a goroutine: read keeps what the
// watcher needs of a response and returns its error. The first limit
// responses (all when limit <= 0) are printed as events named event, with
// their groups when they carry no error, unless quiet (then groups is never
// called: converting thousands of devices per answer costs CPU).
func watch[R any](ch <-chan *R, event string, tag fields, limit int64, quiet bool,
	read func(*watcher, *R) error, groups func(*R) any) *watcher {
	w, start := newWatcher(), time.Now()
	go func() {
		defer close(w.closed)
		for resp := range ch {
			if resp == nil {
				continue
			}
			// Whether the test had cancelled when it arrived, read before the response is
			// counted: a test waiting for it cancels only after it is counted.
			cancelled := w.cancelled.Load()
			err := read(w, resp)
			n, show := w.response(err, cancelled, limit)
			if !quiet && show {
				ev := w.responseEvent(n, start, err, cancelled, tag)
				if err == nil {
					ev["groups"] = groups(resp)
				}
				emit(event, ev)
			}
			w.counted(n)
		}
	}()
	return w
}

var errTimeout = errors.New("timed out")

// waitCount waits until the watcher has seen n responses in all.
func (w *watcher) waitCount(n int64, timeout time.Duration) error {
	deadline := time.After(timeout)
	for w.count.Load() < n {
		select {
		case <-w.got:
		case <-w.closed:
			if w.count.Load() < n {
				return fmt.Errorf("stream closed after %d of %d responses", w.count.Load(), n)
			}
		case <-deadline:
			return fmt.Errorf("%w after %s waiting for response %d (have %d)", errTimeout, timeout, n, w.count.Load())
		}
	}
	return nil
}

func (w *watcher) waitClosed(timeout time.Duration) bool {
	select {
	case <-w.closed:
		return true
	case <-time.After(timeout):
		return false
	}
}

// openStreams opens Fingerprint and (when statsLimit >= 0) Stats on one
// context, as the device manager keeps both open.
type streams struct {
	ctx    context.Context
	cancel context.CancelFunc
	fp, st *watcher
}

func openStreams(dev device.DevicePlugin, interval time.Duration, statsLimit int64, tag fields, quiet bool) (*streams, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &streams{ctx: ctx, cancel: cancel}
	fch, err := dev.Fingerprint(ctx)
	if err != nil {
		cancel()
		return nil, atStage("fingerprint", err)
	}
	s.fp = watchFingerprint(fch, tag, quiet)
	if statsLimit >= 0 {
		sch, err := dev.Stats(ctx, interval)
		if err != nil {
			cancel()
			return nil, atStage("stats", err)
		}
		s.st = watchStats(sch, tag, statsLimit, quiet)
	}
	return s, nil
}

// close cancels the streams' context and reports whether the client closed
// both channels, i.e. the streams really ended.
func (s *streams) close(timeout time.Duration) fields {
	s.fp.cancelled.Store(true)
	if s.st != nil {
		s.st.cancelled.Store(true)
	}
	start := time.Now()
	s.cancel()
	out := fields{"fingerprint_closed": s.fp.waitClosed(timeout)}
	if s.st != nil {
		out["stats_closed"] = s.st.waitClosed(timeout)
	}
	out["close_ms"] = millis(time.Since(start))
	return out
}

func decodeB64(s string) ([]byte, error) {
	if data, err := base64.StdEncoding.DecodeString(s); err == nil {
		return data, nil
	}
	return base64.RawStdEncoding.DecodeString(s)
}
