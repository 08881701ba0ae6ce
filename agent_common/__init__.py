"""What both agents need and neither owns: the journald log format, the TOML config reader and the
plugin loader. It imports neither agent, so each agent's package can ship without the other."""
