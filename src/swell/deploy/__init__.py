"""Deploying Swell past one machine: Kubernetes manifests (`swell deploy kubernetes`) for the gateway,
Redis, the config and secrets, and a KubeRay `RayCluster` whose worker pods drain on a preemption
notice (`python -m swell.deploy.drain`, their preStop hook)."""
