package main

import (
	"encoding/json"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/nomad/plugins/device"
	psstructs "github.com/hashicorp/nomad/plugins/shared/structs"
)

type fields = map[string]any

var emitLock sync.Mutex

// emit writes one event as a JSON line. Events from stream goroutines and log
// capture interleave, so writes are serialized.
func emit(event string, f fields) {
	if f == nil {
		f = fields{}
	}
	f["event"] = event
	line, err := json.Marshal(f)
	if err != nil {
		line, _ = json.Marshal(fields{"event": "error", "stage": "emit", "error": err.Error()})
	}
	emitLock.Lock()
	defer emitLock.Unlock()
	os.Stdout.Write(append(line, '\n'))
}

func errString(err error) any {
	if err == nil {
		return nil
	}
	return err.Error()
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// groupJSON is a device group as the client receives it, with Nomad's own
// validation of it (the device manager drops a response that fails it).
func groupJSON(g *device.DeviceGroup) fields {
	if g == nil {
		return fields{"nil": true}
	}
	devices := make([]fields, 0, len(g.Devices))
	for _, d := range g.Devices {
		if d == nil {
			devices = append(devices, fields{"nil": true})
			continue
		}
		devices = append(devices, instanceJSON(d.ID, d.Healthy, d.HealthDesc,
			busID(d.HwLocality, func(l *device.DeviceLocality) string { return l.PciBusID })))
	}
	attrs := fields{}
	for name, a := range g.Attributes {
		attrs[name] = attributeJSON(a)
	}
	return fields{
		"vendor": g.Vendor, "type": g.Type, "name": g.Name,
		"devices": devices, "attributes": attrs,
		"validate_error": errString(g.Validate()),
	}
}

// instanceJSON is one device as the plugin (a group's device) or the node
// (a device resource's instance) reports it.
func instanceJSON(id string, healthy bool, desc string, pciBusID any) fields {
	return fields{"id": id, "healthy": healthy, "health_desc": desc, "pci_bus_id": pciBusID}
}

// busID is the PCI bus ID of a locality, or nil without one.
func busID[L any](loc *L, get func(*L) string) any {
	if loc == nil {
		return nil
	}
	return get(loc)
}

func attributeJSON(a *psstructs.Attribute) fields {
	if a == nil {
		return fields{"type": nil}
	}
	out := fields{"unit": a.Unit, "text": a.GoString(), "validate_error": errString(a.Validate())}
	switch {
	case a.Int != nil:
		out["type"], out["value"] = "int", *a.Int
	case a.Float != nil:
		out["type"], out["value"] = "float", *a.Float
	case a.String != nil:
		out["type"], out["value"] = "string", *a.String
	case a.Bool != nil:
		out["type"], out["value"] = "bool", *a.Bool
	default:
		out["type"] = nil
	}
	return out
}

func groupsJSON(groups []*device.DeviceGroup) []fields {
	out := make([]fields, 0, len(groups))
	for _, g := range groups {
		out = append(out, groupJSON(g))
	}
	return out
}

// statsJSON keeps Nomad's own StatValue/StatObject JSON (the client's types)
// and adds the instance IDs in order for easy comparison.
func statsJSON(groups []*device.DeviceGroupStats) []fields {
	out := make([]fields, 0, len(groups))
	for _, g := range groups {
		if g == nil {
			out = append(out, fields{"nil": true})
			continue
		}
		ids := make([]string, 0, len(g.InstanceStats))
		instances := fields{}
		for id, s := range g.InstanceStats {
			ids = append(ids, id)
			if s == nil {
				instances[id] = nil
				continue
			}
			instances[id] = fields{
				"summary": s.Summary, "stats": s.Stats,
				"timestamp": s.Timestamp.Format(time.RFC3339Nano), "timestamp_unix_nano": s.Timestamp.UnixNano(),
			}
		}
		sort.Strings(ids)
		out = append(out, fields{"vendor": g.Vendor, "type": g.Type, "name": g.Name, "ids": ids, "instances": instances})
	}
	return out
}

func reservationJSON(r *device.ContainerReservation) any {
	if r == nil {
		return nil
	}
	mounts := make([]fields, 0, len(r.Mounts))
	for _, m := range r.Mounts {
		mounts = append(mounts, fields{"task_path": m.TaskPath, "host_path": m.HostPath, "read_only": m.ReadOnly})
	}
	devices := make([]fields, 0, len(r.Devices))
	for _, d := range r.Devices {
		devices = append(devices, fields{"task_path": d.TaskPath, "host_path": d.HostPath, "cgroup_perms": d.CgroupPerms})
	}
	return fields{"envs": r.Envs, "mounts": mounts, "devices": devices}
}
