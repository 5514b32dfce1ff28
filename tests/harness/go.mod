module github.com/nomad-device-nvidia/harness

go 1.25.8

// The same replacements Nomad's own go.mod carries; replace lines do not
// travel with a dependency, so a module that imports Nomad must repeat them.
replace (
	github.com/Microsoft/go-winio => github.com/endocrimes/go-winio v0.4.13-0.20190628114223-fb47a8b41948
	github.com/hashicorp/hcl => github.com/hashicorp/hcl v1.0.1-nomad-1
	github.com/armon/go-metrics => github.com/armon/go-metrics v0.0.0-20230509193637-d9ca9af9f1f9
	github.com/imdario/mergo => github.com/imdario/mergo v0.3.16
)
