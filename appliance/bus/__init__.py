"""The result bus (ZeroMQ PUB + ROUTER control), its client, and the CURVE keys that guard both."""
