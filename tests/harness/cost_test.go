package main

import (
	"os"
	"syscall"
	"testing"
	"time"
)

func cpuSelf(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// The samples count CPU the process really spent (as getrusage sees it) and
// read its threads and memory.
func TestSampleProcCountsCPU(t *testing.T) {
	before, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	start := cpuSelf(t)
	x := 0
	for cpuSelf(t)-start < 200*time.Millisecond {
		for i := 0; i < 100000; i++ {
			x += i
		}
	}
	after, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	c := after.since(before)
	secs := after.at.Sub(before.at).Seconds()
	run := c["cpu_ms_per_s"].(float64) * secs
	ticks := c["cpu_ms_per_s_ticks"].(float64) * secs
	if run < 190 || run > 1000*secs*float64(len(after.runNS))+1 {
		t.Errorf("schedstat counted %.1f ms for >= 200 ms of CPU over %.3f s (x=%d)", run, secs, x)
	}
	if ticks < 180 {
		t.Errorf("utime+stime counted %.1f ms for >= 200 ms of CPU", ticks)
	}
	if after.threads < 1 || after.threads < len(after.runNS)-1 || after.rssKiB <= 0 || after.hwmKiB < after.rssKiB {
		t.Errorf("threads %d (%d sampled), rss %d KiB, hwm %d KiB", after.threads, len(after.runNS), after.rssKiB, after.hwmKiB)
	}
}

func TestSampleProcGoneProcess(t *testing.T) {
	if _, err := sampleProc(1 << 30); err == nil {
		t.Error("a pid that does not exist sampled without an error")
	}
}

// A thread that sleeps leaves the CPU each time: the samples count those wakes.
func TestSampleProcCountsWakes(t *testing.T) {
	before, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		time.Sleep(time.Millisecond)
	}
	after, err := sampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	c := after.since(before)
	secs := after.at.Sub(before.at).Seconds()
	if w := c["wakes_per_s"].(float64) * secs; w < 1 {
		t.Errorf("%.1f wakes counted over 20 sleeps", w)
	}
	for _, th := range c["top_threads"].([]fields) {
		if th["wakes_per_s"].(float64) < 0 {
			t.Errorf("thread %v: negative wakes", th)
		}
	}
}

func TestCtxtSwitches(t *testing.T) {
	status := "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n"
	if n := ctxtSwitches(status); n != 15 {
		t.Errorf("ctxtSwitches = %d, want 15", n)
	}
}
