plugin "nomad-device-nvidia" {
  config {
    stats_engine = <<EOT
python
EOT
    ignored_gpu_ids = [
      "GPU-1",
      "GPU-2",
    ]
  }
}
