# Two whole GPUs (>= 70 GiB each, compute capability >= 9.0); the task prints its
# environment (NVIDIA_VISIBLE_DEVICES names the reserved GPUs) and stays up.
job "gpu-env" {
  datacenters = ["*"]
  type = "service"
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "show-env" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "env | sort; exec sleep 3600"]
      }
      resources {
        cpu    = 50
        memory = 32
        device "nvidia/gpu" {
          count = 2
          constraint {
            attribute = "${device.attr.memory}"
            operator  = ">="
            value     = "70 GiB"
          }
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
