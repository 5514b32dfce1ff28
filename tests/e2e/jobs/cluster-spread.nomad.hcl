# Three copies, one GPU each, spread over the nodes: one lands on each node.
job "spread-1gpu" {
  datacenters = ["*"]
  type        = "service"
  group "g" {
    count = 3
    spread {
      attribute = "${node.unique.name}"
      weight    = 100
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
        }
      }
    }
  }
}
