"""`meshfed policy` and the policy reader against a real etcd: apply, get, ls, diff, delete, refusals,
and a corrupt stored record skipped while the previous valid policy stays in force."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from federation.core.backoff import Backoff
from federation.core.keys import Keys
from federation.core.policy.codec import encode_policy, from_document, policy_key
from federation.registry.embedded import EtcdProcess
from federation.registry.etcd import EtcdClient, Put
from federation.registry.policies import PolicyReader, PolicyStore
from tests.util import eventually

KEYS = Keys()
CANARY = """\
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata:
  namespace: shop
  name: web
spec:
  split:
    - weight: 90
      labels: {version: v1}
    - weight: 10
      labels: {version: v2}
---
apiVersion: meshfed.io/v1alpha1
kind: TrafficPolicy
metadata: {namespace: shop, name: db}
spec:
  timeouts: {idle: 24h}
  ports:
    - port: 5432
      retries: {attempts: 1}
"""


def meshfed(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "federation", *args], capture_output=True, text=True, timeout=60,
                          input=stdin)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


async def raw_keys(etcd: EtcdProcess) -> dict[str, bytes]:
    async with EtcdClient([etcd.endpoint]) as client:
        kvs, _ = await client.get_prefix(KEYS.mesh("policies") + "/")
    return {k: v.value for k, v in kvs.items()}


def test_apply_get_ls_diff_delete(etcd: EtcdProcess, tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    canary = write(tmp_path, "canary.yaml", CANARY)
    out = meshfed("policy", "apply", "-f", canary, *ep)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["trafficpolicy shop/web configured", "trafficpolicy shop/db configured"]
    assert "not signed (no --operator)" in out.stderr  # agents that require signatures skip them
    assert set(asyncio.run(raw_keys(etcd))) == {policy_key(KEYS, "shop", "web"), policy_key(KEYS, "shop", "db")}
    again = meshfed("policy", "apply", "-f", canary, *ep)
    assert again.stdout.splitlines() == ["trafficpolicy shop/web unchanged", "trafficpolicy shop/db unchanged"]

    got = meshfed("policy", "get", "shop/web", *ep)
    assert got.returncode == 0, got.stderr
    doc = yaml.safe_load(got.stdout)
    assert doc["spec"]["split"] == [{"weight": 90, "labels": {"version": "v1"}},
                                    {"weight": 10, "labels": {"version": "v2"}}]
    assert doc["spec"]["retries"]["attempts"] == 3  # every default written out
    assert from_document(doc) == from_document(yaml.safe_load(CANARY.split("---")[0]))
    as_json = json.loads(meshfed("policy", "get", "shop/db", "-o", "json", *ep).stdout)
    assert as_json["spec"]["ports"] == [{"port": 5432, "retries": {"attempts": 1}}]

    listing = meshfed("policy", "ls", *ep)
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["SERVICE", "PORTS", "SPLIT", "FAULTS", "REVISION", "STATUS"]
    assert lines[1].split()[:3] == ["shop/db", "5432", "-"]
    assert lines[2].split()[:3] == ["shop/web", "-", "version=v1:90,version=v2:10"]
    assert [r["status"] for r in json.loads(meshfed("policy", "ls", "--json", *ep).stdout)] == ["ok", "ok"]

    same = meshfed("policy", "diff", "-f", canary, *ep)
    assert (same.returncode, same.stdout) == (0, "")
    changed = write(tmp_path, "changed.yaml", CANARY.replace("weight: 90", "weight: 50").replace("weight: 10",
                                                                                                  "weight: 50"))
    diff = meshfed("policy", "diff", "-f", changed, *ep)
    assert diff.returncode == 1
    assert "--- shop/web stored" in diff.stdout
    assert "-  - weight: 90" in diff.stdout
    assert "+  - weight: 50" in diff.stdout
    assert "shop/db" not in diff.stdout  # unchanged documents print nothing
    new = write(tmp_path, "new.yaml", CANARY.replace("name: web", "name: api"))
    assert "--- shop/api (none)" in meshfed("policy", "diff", "-f", new, *ep).stdout
    assert meshfed("policy", "get", "shop/web", *ep).stdout == got.stdout  # diff wrote nothing

    deleted = meshfed("policy", "delete", "shop/web", *ep)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, "trafficpolicy shop/web deleted")
    gone = meshfed("policy", "get", "shop/web", *ep)
    assert gone.returncode == 1
    assert "no traffic policy for shop/web (defaults apply)" in gone.stderr
    assert meshfed("policy", "delete", "shop/web", *ep).returncode == 1
    assert meshfed("policy", "get", "web", *ep).returncode == 2


def test_a_bad_file_is_refused_with_field_and_reason_and_nothing_is_written(etcd: EtcdProcess,
                                                                          tmp_path: Path) -> None:
    ep = ("--endpoints", etcd.endpoint)
    bad = CANARY.replace("weight: 10", "weight: 20")  # the first document's weights sum to 110
    out = meshfed("policy", "apply", "-f", write(tmp_path, "bad.yaml", bad), *ep)
    assert out.returncode == 1
    assert "bad.yaml (document 1): spec.split: weights sum to 110, not 100 (nothing applied)" in out.stderr
    typo = CANARY.split("---")[1].replace("timeouts:", "timeout:")
    out = meshfed("policy", "apply", "-f", "-", *ep, stdin=CANARY.split("---")[0] + "---" + typo)
    assert out.returncode == 1
    assert "<stdin> (document 2): spec.timeout: unknown field" in out.stderr
    out = meshfed("policy", "apply", "-f", write(tmp_path, "broken.yaml", "spec: [unclosed\n"), *ep)
    assert out.returncode == 1
    assert "broken.yaml:2:1: not YAML" in out.stderr
    assert asyncio.run(raw_keys(etcd)) == {}
    nowhere = meshfed("policy", "ls")
    assert nowhere.returncode == 1
    assert "--config FILE or --endpoints" in nowhere.stderr


async def test_a_corrupt_record_is_skipped_and_the_previous_policy_stays(etcd: EtcdProcess,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    web = from_document(yaml.safe_load(CANARY.split("---")[0]))
    reader = PolicyReader(EtcdClient([etcd.endpoint], timeout=3), KEYS, backoff=Backoff(base=0.05, cap=0.5))
    async with EtcdClient([etcd.endpoint], timeout=3) as client:
        store = PolicyStore(client, KEYS)
        assert await store.apply(web)
        task = asyncio.create_task(reader.run(), name="policy-reader")
        try:
            await eventually(lambda: reader.policies.get().get(("shop", "web")) == web, what="the policy to arrive")
            key = policy_key(KEYS, "shop", "web")
            with caplog.at_level(logging.WARNING, logger="federation.registry.policies"):
                await client.commit([Put(key, b'{"schema": 1, "apiVersion": "meshfed.io/v1alpha1", "kind":')])
                await client.commit([Put(key, encode_policy(web)[:-2] + b', "retries": {"attempts": 0}}}')])
                await eventually(lambda: reader.index.rejections == 2, what="both corrupt puts rejected")
            assert reader.policies.get()[("shop", "web")] == web
            assert reader.index.get("shop", "web") == web
            warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
            assert len(warnings) == 1  # rate limited per key
            assert key in warnings[0]
            assert "the previous policy stays in force" in warnings[0]
            stored = await store.get("shop", "web")
            assert stored is not None
            assert stored.policy is None
            assert "spec.retries.attempts" in stored.error or "not JSON" in stored.error
            listing = await store.list()
            assert [s.policy for s in listing] == [None]

            fixed = from_document(yaml.safe_load(CANARY.split("---")[0].replace("weight: 90", "weight: 80")
                                                 .replace("weight: 10", "weight: 20")))
            await store.apply(fixed)
            await eventually(lambda: reader.policies.get().get(("shop", "web")) == fixed, what="the fixed policy")
            assert not reader.index.rejected
            await store.delete("shop", "web")
            await eventually(lambda: ("shop", "web") not in reader.policies.get(), what="the delete")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_the_reader_keeps_its_policies_while_etcd_is_silent(etcd: EtcdProcess) -> None:
    web = from_document(yaml.safe_load(CANARY.split("---")[0]))
    reader = PolicyReader(EtcdClient([etcd.endpoint], timeout=1), KEYS, backoff=Backoff(base=0.05, cap=0.3))
    task = asyncio.create_task(reader.run(), name="policy-reader")
    try:
        async with EtcdClient([etcd.endpoint], timeout=3) as client:
            await PolicyStore(client, KEYS).apply(web)
        await eventually(lambda: ("shop", "web") in reader.policies.get(), what="the policy")
        etcd.pause()
        await asyncio.sleep(1.5)
        assert reader.policies.get()[("shop", "web")] == web  # nothing is dropped because etcd is away
        etcd.resume()
        async with EtcdClient([etcd.endpoint], timeout=3) as client:
            await PolicyStore(client, KEYS).delete("shop", "web")
        await eventually(lambda: ("shop", "web") not in reader.policies.get(), what="the delete after resync")
    finally:
        etcd.resume()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
