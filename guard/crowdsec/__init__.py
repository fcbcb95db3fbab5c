"""CrowdSec (docs/operations.md): the node as a bouncer of a Local API, whose ban decisions its ban
check drops (``decisions``: the stream, read as untrusted; ``held``: what the node holds and the kernel
changes each pull makes; ``lapi``: the HTTP client), run by the daemon's part (daemon/crowdsec_part.py)."""
