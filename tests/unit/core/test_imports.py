"""Scoped imports: pattern checks and which records a site carries."""

from __future__ import annotations

import pytest

from federation.core.catalog import Catalog
from federation.core.codec import encode_export, encode_site
from federation.core.errors import ConfigError
from federation.core.imports import check_patterns, import_filter
from federation.core.keys import Keys, ServiceKey
from tests.util import export, site

KEYS = Keys()


def test_patterns_are_normalised_and_bad_ones_named() -> None:
    assert check_patterns(["shop/*", "web", "*/db-?"]) == ("shop/*", "*/web", "*/db-?")
    for bad, reason in (("Shop/web", "'Shop/web' is not NAMESPACE/NAME"), ("a/b/c", "'a/b/c'"), ("", "''")):
        with pytest.raises(ConfigError, match=reason):
            check_patterns(["shop/*", bad])


def test_everything_needs_no_filter_and_own_exports_are_always_carried() -> None:
    assert import_filter(("*/*",), "east") is None
    assert import_filter((), "east") is None
    wanted = import_filter(check_patterns(["shop/*", "payments/api"]), "east")
    assert wanted is not None
    assert wanted(ServiceKey("west", "shop", "cart"))
    assert wanted(ServiceKey("west", "payments", "api"))
    assert not wanted(ServiceKey("west", "payments", "ledger"))
    assert wanted(ServiceKey("east", "payments", "ledger"))  # this site's own export


def test_a_scoped_catalog_never_decodes_what_it_does_not_import() -> None:
    cat = Catalog(KEYS, imports=import_filter(check_patterns(["shop/web"]), "east"))
    cat.put(KEYS.site("west"), encode_site(site("west", "n2")), 1)
    cat.put(KEYS.service("west", "shop", "web"), encode_export(export("west", "web", "shop")), 2)
    cat.put(KEYS.service("west", "shop", "db"), b"not even json", 3)  # skipped, not rejected
    view = cat.view()
    assert set(view.services()) == {("shop", "web")}
    assert cat.rejected == {}
    assert cat.skipped == 1
