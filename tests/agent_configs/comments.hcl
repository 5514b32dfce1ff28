# An agent file as operators write them: comments of every kind, other blocks around.
datacenter = "dc1"   // trailing comment
data_dir   = "/opt/nomad/data"

/* A block comment
   over several lines, with a } inside */
client {
  enabled = true
  options = { "driver.raw_exec.enable" = "1" }
}

plugin "nomad-device-nvidia" {
  # the block's own comment
  config {
    enabled            = true // inline
    fingerprint_period = "30s"
    ignored_gpu_ids    = ["GPU-a", /* inside a list */ "GPU-b"]
    stats_engine       = "python"
    health {
      ignored_xids   = [13, 31, 43]
      probe_interval = "2s"
      call_timeout   = "1500ms"
    }
    reserve {
      cuda_visible_devices = true
    }
    sharing {
      shares = 4
    }
  }
}
