"""Jobs and their state machine, service specs, errors and clocks: pure code, no I/O."""
