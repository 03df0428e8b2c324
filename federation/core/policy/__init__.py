"""Mesh-wide policies (`TrafficPolicy`): the typed model, its YAML/JSON codec with validation, and the index
of the last valid policy per key. Pure: no IO, no clock; imports only federation.core.
"""
