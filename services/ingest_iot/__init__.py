"""The device side: the device HTTP API and the MQTT bridge (desired out, reported in)."""
