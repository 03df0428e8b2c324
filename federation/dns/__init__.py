"""Federated DNS: MCS names for every imported service, answered from the registry mirror."""
