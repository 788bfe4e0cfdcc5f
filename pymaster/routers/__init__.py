"""Gateways: subscription pools, the fastrouter, the HTTP frontend."""
