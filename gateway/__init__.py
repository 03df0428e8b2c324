"""meshfed data plane: tunnel protocol, east-west listener, egress, load balancing."""
