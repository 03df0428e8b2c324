"""The Kubernetes source: exports from ServiceExports, imports as ServiceImports and derived Services."""
