"""Backends that start, watch, scale and stop worker replicas behind one protocol (`base.Cluster`,
opened by `base.open_cluster`): local processes (`local`), Ray actors (`ray`, needs the `ray` extra),
and a deterministic fake on virtual time (`fake`); with the pure parts they share, placement on
nodes (`placement`) and GPU shares (`gpu`)."""
