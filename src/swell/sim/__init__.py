"""The trace-driven simulator: trace readers, the GPU pool model, the virtual-time event loop,
reports, sweeps and plots. `swell.sim.engine.simulate(trace, policy, pool)` runs one replay."""
