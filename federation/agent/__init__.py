"""The composition root: the settings tree, the agent's lifecycle, the data plane's assembly, the admin
endpoint. The one place where `federation` meets `gateway`. Imported only by `cli`.
"""
