"""The work behind the routers: each module takes checked requests and a loaded engine and
returns response models; the routers only parse, call one of these and return the result."""
