"""The brain: metrics, forecasters, autoscaling policies, planner and guardrails."""
