"""Code both services use. ``shared.twin`` is the pure twin core."""
