"""The VM source: exports with health checks, LAN discovery and announcing, and the VIP interface."""
