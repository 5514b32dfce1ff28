# Nine Hopper-class GPUs (compute capability >= 9.0) in one task: more than any node
# has (h100 has eight, gh200 one, the A100s are 8.0). Nothing is placed; every node
# is filtered with Nomad's reason "missing devices", and the job waits, blocked.
job "too-many-gpus" {
  datacenters = ["*"]
  type        = "service"
  group "g" {
    task "train" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
      resources {
        cpu    = 20
        memory = 16
        device "nvidia/gpu" {
          count = 9
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
