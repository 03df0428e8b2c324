"""The stand-in API server now ships in the package (the demo runs it); tests import it from here."""

from federation.kubernetes.standin import *  # noqa: F403
from federation.kubernetes.standin import TOKEN, FakeApiServer, Kind  # noqa: F401
