"""The master process: arbiter loop, sockets, scoreboard, workers, control."""
