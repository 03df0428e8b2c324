"""The development kit: the one-machine demo, the network-namespace lab, the sample service and the
development Kubernetes API server. Not part of an agent: nothing in the product imports it except the
`meshfed demo` command, and the tests.
"""
