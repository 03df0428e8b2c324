"""The `meshfed` command: one module per command group, imported plainly by `main.py`.

The only code that reads files, environment (`MESHFED_*`) and argv; everything below receives settings.
"""
