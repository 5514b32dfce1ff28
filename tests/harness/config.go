package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/golang/protobuf/jsonpb"
	multierror "github.com/hashicorp/go-multierror"
	version "github.com/hashicorp/go-version"
	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/hashicorp/hcl/v2/hcldec"
	"github.com/hashicorp/nomad/client/lib/numalib"
	"github.com/hashicorp/nomad/command/agent"
	"github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	"github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	"github.com/hashicorp/nomad/nomad/structs/config"
	"github.com/hashicorp/nomad/plugins/base"
	"github.com/hashicorp/nomad/plugins/device"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
	"github.com/zclconf/go-cty/cty/msgpack"
)

// pluginInfo asks PluginInfo and checks it as the loader does: a parseable
// plugin version and an API version the agent supports for devices.
func pluginInfo(b base.BasePlugin) (*base.PluginInfoResponse, string, error) {
	info, err := b.PluginInfo()
	if err != nil {
		emit("info", fields{"error": err.Error()})
		return nil, "", atStage("plugin_info", err)
	}
	ev := fields{
		"type": info.Type, "name": info.Name, "plugin_version": info.PluginVersion,
		"api_versions": info.PluginApiVersions, "version_error": nil, "api_version": nil, "api_error": nil,
	}
	if _, err := version.NewVersion(info.PluginVersion); err != nil {
		ev["version_error"] = err.Error()
	}
	api, apiErr := selectAPIVersion(info.PluginApiVersions)
	ev["api_version"], ev["api_error"] = api, errString(apiErr)
	emit("info", ev)
	return info, api, nil
}

func selectAPIVersion(offered []string) (string, error) {
	supported := version.Must(version.NewVersion(device.ApiVersion010))
	if len(offered) == 0 {
		return "", errors.New("plugin provided no compatible API versions")
	}
	for _, v := range offered {
		pv, err := version.NewVersion(v)
		if err != nil {
			return "", fmt.Errorf("plugin provided invalid versions: failed to convert version %q : %v", v, err)
		}
		if pv.Equal(supported) {
			return pv.Original(), nil
		}
	}
	return "", fmt.Errorf("no API version in %v overlaps the agent's %s", offered, device.ApiVersion010)
}

// configSchema fetches the plugin's hclspec and converts it with Nomad's
// hclspecutils, which is where the agent rejects a malformed schema.
func configSchema(b base.BasePlugin) (hcldec.Spec, error) {
	schema, err := b.ConfigSchema()
	if err != nil {
		emit("schema", fields{"error": err.Error()})
		return nil, atStage("config_schema", err)
	}
	ev := fields{"error": nil, "spec": nil, "convert_error": nil, "implied_type": nil}
	if schema != nil {
		if text, err := (&jsonpb.Marshaler{}).MarshalToString(schema); err == nil {
			ev["spec"] = json.RawMessage(text)
		}
	}
	spec, diag := hclspecutils.Convert(schema)
	if diag.HasErrors() {
		ev["convert_error"] = diag.Error()
		emit("schema", ev)
		return nil, atStage("config_schema", fmt.Errorf("failed converting config schema: %s", diag.Error()))
	}
	if t, err := ctyjson.MarshalType(hcldec.ImpliedType(spec)); err == nil {
		ev["implied_type"] = json.RawMessage(t)
	}
	emit("schema", ev)
	return spec, nil
}

// agentPluginBlocks is the part of the agent's configuration file the
// loader reads: `plugin "<binary name>" { args = [...] config { ... } }`.
type agentPluginBlocks struct {
	Plugins []*config.PluginConfig `hcl:"plugin"`
}

// readPluginConfig reads an HCL file as the agent does. An agent file (HCL
// or JSON) with `plugin` blocks goes through the agent's own
// agent.ParseConfigFile, and the block the loader would use is taken: the
// last one with that name (the loader keys its configs by name), or the only
// one. The launcher's form, a bare `config { ... }` block, is read as the
// body of a plugin block.
func readPluginConfig(path, name string) (*config.PluginConfig, error) {
	if path == "" {
		return &config.PluginConfig{Name: name}, nil
	}
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	root, err := hcl.Parse(string(text))
	if err != nil {
		return nil, fmt.Errorf("failed to parse HCL file %s: %w", path, err)
	}
	list, ok := root.Node.(*ast.ObjectList)
	if !ok {
		return nil, fmt.Errorf("error parsing %s: root should be an object", path)
	}
	if len(list.Filter("plugin").Items) == 0 {
		var blocks agentPluginBlocks
		src := fmt.Sprintf("plugin %q {\n%s\n}\n", name, text)
		if err := hcl.Decode(&blocks, src); err != nil {
			return nil, fmt.Errorf("failed to decode HCL file %s: %w", path, err)
		}
		return blocks.Plugins[0], nil
	}
	cfg, err := agent.ParseConfigFile(path)
	if err != nil {
		return nil, err
	}
	if len(cfg.Plugins) == 1 {
		return cfg.Plugins[0], nil
	}
	var found *config.PluginConfig
	for _, p := range cfg.Plugins {
		if p.Name == name {
			found = p
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%s: no single plugin block, and none named %q", path, name)
	}
	return found, nil
}

// encodeConfig is the loader's validatePluginConfig: the block's config map
// through hclutils.ParseHclInterface against the plugin's spec, then cty
// msgpack with the value's type. agentErr is what the agent would report.
func encodeConfig(cfg map[string]interface{}, spec hcldec.Spec) (data []byte, val cty.Value, agentErr error) {
	if cfg == nil {
		cfg = map[string]interface{}{}
	}
	val, diag, diagErrs := hclutils.ParseHclInterface(cfg, spec, nil)
	if diag.HasErrors() {
		var mErr multierror.Error
		_ = multierror.Append(&mErr, diagErrs...)
		return nil, cty.NilVal, multierror.Prefix(&mErr, "failed to parse config: ")
	}
	data, err := msgpack.Marshal(val, val.Type())
	if err != nil {
		return nil, cty.NilVal, fmt.Errorf("failed to msgpack encode config: %v", err)
	}
	return data, val, nil
}

// configSource is one SetConfig payload: an HCL file encoded the agent's way,
// or raw msgpack bytes made by the test (payloads hcldec would never let
// through: unknown keys, wrong types).
type configSource struct {
	hclPath string
	raw     []byte
	isRaw   bool
}

func (c configSource) describe() string {
	if c.isRaw {
		return "msgpack"
	}
	if c.hclPath == "" {
		return "hcl:(empty)"
	}
	return "hcl:" + c.hclPath
}

// prepare turns a config source into the SetConfig payload, emitting a
// "config" event; ok is false when the agent itself would have refused it.
func (c configSource) prepare(spec hcldec.Spec, name string, step int) (data []byte, ok bool, err error) {
	ev := fields{"step": step, "source": c.describe(), "agent_error": nil, "value": nil, "msgpack_len": nil}
	if c.isRaw {
		ev["msgpack_len"] = len(c.raw)
		emit("config", ev)
		return c.raw, true, nil
	}
	pc, err := readPluginConfig(c.hclPath, name)
	if err != nil {
		return nil, false, atStage("read_config", err)
	}
	ev["block"] = pc.Config
	data, val, agentErr := encodeConfig(pc.Config, spec)
	if agentErr != nil {
		ev["agent_error"] = agentErr.Error()
		emit("config", ev)
		return nil, false, nil
	}
	if js, err := ctyjson.Marshal(val, val.Type()); err == nil {
		ev["value"] = json.RawMessage(js)
	}
	ev["msgpack_len"] = len(data)
	emit("config", ev)
	return data, true, nil
}

// agentConfig is what the client hands device plugins: its plugin port range
// and the host's CPU topology (dmidecode off: nothing is exec'd to scan it).
func agentConfig() *base.AgentConfig {
	return &base.AgentConfig{Driver: &base.ClientDriverConfig{
		ClientMinPort: 14000,
		ClientMaxPort: 14512,
		Topology:      numalib.Scan(numalib.PlatformScanners(true)),
	}}
}

// setConfig sends the payload and reports the plugin's answer.
func setConfig(b base.BasePlugin, data []byte, apiVersion string, agent *base.AgentConfig, step int) error {
	err := b.SetConfig(&base.Config{PluginConfig: data, AgentConfig: agent, ApiVersion: apiVersion})
	emit("set_config", fields{"step": step, "error": errString(err), "agent_config": agent != nil})
	return err
}

func rawConfigs(list []string) ([]configSource, error) {
	var out []configSource
	for _, b64 := range list {
		data, err := decodeB64(b64)
		if err != nil {
			return nil, usageError{fmt.Sprintf("bad base64 msgpack %q: %v", b64, err)}
		}
		out = append(out, configSource{raw: data, isRaw: true})
	}
	return out, nil
}

// parseStep reads a configs step: hcl:PATH, msgpack:BASE64 or probe.
func parseStep(s string) (configSource, bool, error) {
	switch {
	case s == "probe":
		return configSource{}, true, nil
	case strings.HasPrefix(s, "hcl:"):
		return configSource{hclPath: strings.TrimPrefix(s, "hcl:")}, false, nil
	case strings.HasPrefix(s, "msgpack:"):
		data, err := decodeB64(strings.TrimPrefix(s, "msgpack:"))
		if err != nil {
			return configSource{}, false, usageError{fmt.Sprintf("step %q: %v", s, err)}
		}
		return configSource{raw: data, isRaw: true}, false, nil
	}
	return configSource{}, false, usageError{fmt.Sprintf("step %q: want hcl:PATH, msgpack:BASE64 or probe", s)}
}
