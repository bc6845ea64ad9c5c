"""Running as a service: health and metrics, systemd notify/watchdog, installation."""
