"""`meshfed vm install` / `vm uninstall` against a temporary root: idempotent, complete, and clean."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from federation.agent.settings import parse_settings
from federation.cli.main import main
from federation.core.settings import read
from federation.dns.settings import DnsSettings
from federation.sources.vm.installing import CONFIG, UNIT_TEXT, InstallOptions, render

REPO = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    assert main(["ca", "init", "--trust-domain", "mesh.example", "--out", str(base / "root")]) == 0
    assert main(["ca", "site", "vm-a", "--ca", str(base / "root"), "--out", str(base / "vm-a")]) == 0
    return base / "vm-a"


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under root with its mode and (for files) contents."""
    return {
        str(p.relative_to(root)): (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def install(root: Path, *extra: str) -> int:
    return main(["vm", "install", "--root", str(root), "--no-venv", "--site", "vm-a", "--network", "net-a",
                 "--registry", "198.18.0.5:2379", *extra])


def test_install_twice_gives_the_same_files_and_uninstall_leaves_nothing(
    tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert install(root, "--bundle", str(bundle), "--dns", "resolved") == 0
    first = tree(root)
    assert install(root, "--bundle", str(bundle), "--dns", "resolved") == 0
    assert tree(root) == first
    out = capsys.readouterr().out
    assert "unchanged /etc/systemd/system/meshfed-agent.service" in out
    assert "kept /etc/meshfed/agent.yaml" in out

    assert first["etc/meshfed/site/site.key"][0] == 0o600
    assert first["etc/meshfed/site"][0] == 0o700
    assert first["etc/meshfed/site/site.crt"][1] == (bundle / "site.crt").read_bytes()
    assert first["etc/systemd/system/meshfed-agent.service"][1] == UNIT_TEXT.encode()
    dropin = first["etc/systemd/resolved.conf.d/meshfed.conf"][1]
    assert dropin is not None
    assert b"Domains=~clusterset.local" in dropin

    assert main(["vm", "uninstall", "--root", str(root)]) == 0
    assert list(root.rglob("*")) == []
    assert main(["vm", "uninstall", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("nothing to remove")


def test_installed_config_is_valid_for_every_section(tmp_path: Path) -> None:
    assert install(tmp_path, "--dns", "resolved") == 0
    data = yaml.safe_load((tmp_path / "etc/meshfed/agent.yaml").read_text())
    config = parse_settings(data, "agent.yaml", {})
    assert (config.site.name, config.site.network, config.registry.endpoints) == ("vm-a", "net-a", ("198.18.0.5:2379",))
    assert config.vm.vip_interface == "meshfed0"
    assert not config.dns.forwarding  # resolved forwards the rest
    assert config.gateway.ca_dir == "/etc/meshfed/site"


def test_resolvconf_mode_forwards_to_the_previous_nameservers(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("search example\nnameserver 127.0.0.53\nnameserver 192.0.2.53\n")
    assert install(tmp_path) == 0  # auto: no systemd-resolved under this root
    dns = read(DnsSettings, yaml.safe_load((tmp_path / "etc/meshfed/agent.yaml").read_text())["dns"], "dns")
    assert dns.forwarding
    assert dns.upstreams == ("192.0.2.53",)
    assert not (tmp_path / "etc/systemd/resolved.conf.d").exists()
    assert "nameserver 127.0.0.1" in capsys.readouterr().out
    assert main(["vm", "uninstall", "--root", str(tmp_path)]) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["etc", "etc/resolv.conf"]


def test_bad_input_fails_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["vm", "install", "--root", str(tmp_path), "--no-venv", "--site", "VM A", "--network", "n"]) == 1
    assert main(["vm", "install", "--root", str(tmp_path), "--no-venv", "--site", "a", "--network", "n",
                 "--bundle", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("meshfed vm install: --site 'VM A' is not a DNS label")
    assert "no site.crt and site.key" in err[1]


def test_deploy_files_are_what_the_installer_writes() -> None:
    assert (REPO / "deploy/vm/meshfed-agent.service").read_text() == UNIT_TEXT
    [config] = [f for f in render(InstallOptions(site="vm-a", network="net-a"), {}) if f.path == CONFIG]
    assert (REPO / "deploy/vm/agent.yaml").read_bytes() == config.content
