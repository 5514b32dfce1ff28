config {
  dir         = "/tmp"
  list_period = "1s"
}
