plugin "nomad-device-nvidia" {
  config {
    fingerprint_period = "10s"
    sharing { shares = 2 }
  }
}

plugin "raw_exec" {
  config {
    enabled = true
  }
}

# The loader keys plugin blocks by name: this later one is the one in force, whole.
plugin "nomad-device-nvidia" {
  config {
    extended_stats = true
    health { probe_interval = "3s" }
  }
}
