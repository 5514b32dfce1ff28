package main

import (
	_ "github.com/hashicorp/go-plugin"
	_ "github.com/hashicorp/nomad/helper/pluginutils/hclspecutils"
	_ "github.com/hashicorp/nomad/helper/pluginutils/hclutils"
	_ "github.com/hashicorp/nomad/plugins/base"
	_ "github.com/hashicorp/nomad/plugins/device"
)

func main() {}
