"""Object builders now ship in the package (the demo uses them); tests import them from here."""

from federation.kubernetes.objects import *  # noqa: F403
