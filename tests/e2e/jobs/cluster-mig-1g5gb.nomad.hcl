# One MIG slice of profile 1g.5gb (an A100 40GB slice): only the a100 node has them.
job "mig-1g5gb" {
  datacenters = ["*"]
  type        = "service"
  group "g" {
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
            attribute = "${device.attr.mig_profile}"
            value     = "1g.5gb"
          }
        }
      }
    }
  }
}
