"""Operations: sd_notify and the watchdog, SIGTERM drain and reloads, the admin socket,
Prometheus metrics and request logs. Each module has one job; the daemon wires them."""
