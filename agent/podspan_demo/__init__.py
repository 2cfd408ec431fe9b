"""The standalone demo: a small sample app in local cgroup "pods", traced by podspan-agent."""
