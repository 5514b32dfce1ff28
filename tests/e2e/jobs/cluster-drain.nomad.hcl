# One Hopper-class GPU (compute capability >= 9.0): h100 or gh200 can run it. Drain
# the node it runs on and Nomad moves it to the other one.
job "hopper-1gpu" {
  datacenters = ["*"]
  type        = "service"
  group "g" {
    migrate {
      max_parallel     = 1
      health_check     = "task_states"
      min_healthy_time = "1s"
      healthy_deadline = "1m"
    }
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "infer" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; exec sleep 3600"]
      }
      resources {
        cpu    = 20
        memory = 16
        device "nvidia/gpu" {
          count = 1
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
