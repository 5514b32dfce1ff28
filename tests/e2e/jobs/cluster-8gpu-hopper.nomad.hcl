# Eight whole GPUs of compute capability 9.0 or newer, in one task: of the three
# nodes of `make cluster` only h100 has eight such GPUs (gh200 has one).
job "train-8gpu" {
  datacenters = ["*"]
  type        = "service"
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "train" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; exec sleep 3600"]
      }
      resources {
        cpu    = 20
        memory = 16
        device "nvidia/gpu" {
          count = 8
          constraint {
            attribute = "${device.attr.compute_capability}"
            operator  = "version"
            value     = ">= 9.0"
          }
        }
      }
    }
  }
}
