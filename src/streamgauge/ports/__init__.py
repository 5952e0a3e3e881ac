"""Ports: bridges that take observations from systems streamgauge connects to as a client
(an MQTT broker), decode them and call the engine, as a face does for a request."""
