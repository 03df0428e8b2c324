"""The small asyncio and OS toolkit both planes share: value holders that wake their readers, guarded
tasks, private files and the TLS file triple.

Imports only `federation.core` and the standard library.
"""
