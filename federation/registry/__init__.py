"""The registry: etcd adapter, the site's publisher and the mesh-wide mirror."""
