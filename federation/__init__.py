"""meshfed control plane: model, registry, sources, PKI, DNS answers, agent, CLI."""

__version__ = "0.1.0"
