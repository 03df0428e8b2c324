"""Reading the protobuf bodies kubectl sends for Namespaces and Services (`kubectl create namespace`, `create service`).

Pure. kubectl's typed clients send `application/vnd.kubernetes.protobuf`: the `k8s\\0` magic, then a
runtime.Unknown envelope whose `raw` field is the object in the field numbering of k8s.io/api's
generated.proto. Only the messages of those two kinds are known here; any other kind is refused
(415) and `kubectl apply -f` / `kubectl create -f`, which send JSON, do the same job.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

MAGIC = b"k8s\x00"

# field number -> (json name, how to read it): "s" string, "i" integer, "b" bool, "[s]" repeated string,
# "{s}" map<string,string>, "t" metav1.Time, "ios" IntOrString, or the name of a message (a leading "[" repeats).
_MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {1: ("typeMeta", "TypeMeta"), 2: ("raw", "raw"), 3: ("contentEncoding", "s"), 4: ("contentType", "s")},
    "TypeMeta": {1: ("apiVersion", "s"), 2: ("kind", "s")},
    "ObjectMeta": {1: ("name", "s"), 2: ("generateName", "s"), 3: ("namespace", "s"), 5: ("uid", "s"),
                   6: ("resourceVersion", "s"), 7: ("generation", "i"), 8: ("creationTimestamp", "t"),
                   11: ("labels", "{s}"), 12: ("annotations", "{s}"), 14: ("finalizers", "[s]")},
    "Namespace": {1: ("metadata", "ObjectMeta"), 2: ("spec", "NamespaceSpec"), 3: ("status", "NamespaceStatus")},
    "NamespaceSpec": {1: ("finalizers", "[s]")},
    "NamespaceStatus": {1: ("phase", "s")},
    "Service": {1: ("metadata", "ObjectMeta"), 2: ("spec", "ServiceSpec")},
    "ServiceSpec": {1: ("ports", "[ServicePort"), 2: ("selector", "{s}"), 3: ("clusterIP", "s"), 4: ("type", "s"),
                    5: ("externalIPs", "[s]"), 7: ("sessionAffinity", "s"), 10: ("externalName", "s"),
                    11: ("externalTrafficPolicy", "s"), 13: ("publishNotReadyAddresses", "b"),
                    14: ("sessionAffinityConfig", "SessionAffinityConfig"), 17: ("ipFamilyPolicy", "s"),
                    18: ("clusterIPs", "[s]"), 19: ("ipFamilies", "[s]"), 22: ("internalTrafficPolicy", "s"),
                    23: ("trafficDistribution", "s")},
    "ServicePort": {1: ("name", "s"), 2: ("protocol", "s"), 3: ("port", "i"), 4: ("targetPort", "ios"),
                    5: ("nodePort", "i"), 6: ("appProtocol", "s")},
    "SessionAffinityConfig": {1: ("clientIP", "ClientIPConfig")},
    "ClientIPConfig": {1: ("timeoutSeconds", "i")},
}
KINDS = ("Namespace", "Service")


class ProtobufError(ValueError):
    """A body that is not a protobuf object this server can read; the message says why."""


class UnsupportedKind(ProtobufError):
    """A well-formed body of a kind this server reads only as JSON (415, so the client knows)."""


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object in a `application/vnd.kubernetes.protobuf` request body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the protobuf body does not start with the k8s magic")
    envelope = _message(body[len(MAGIC):], "Unknown")
    meta = envelope.get("typeMeta") or {}
    kind = meta.get("kind")
    if kind not in KINDS:
        raise UnsupportedKind(f"kind {kind!r} in protobuf is not readable here; send JSON (kubectl apply -f)")
    obj = _message(envelope.get("raw", b""), str(kind))
    return {"apiVersion": meta.get("apiVersion", "v1"), "kind": kind, **obj}


def _message(data: Any, name: str) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise ProtobufError(f"{name} is not a length-delimited field")
    try:
        return _decode(data, name)
    except UnicodeDecodeError as exc:
        raise ProtobufError(f"a string in {name} is not UTF-8: {exc}") from None


def _decode(data: bytes, name: str) -> dict[str, Any]:
    fields = _MESSAGES[name]
    out: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in fields:
            continue
        key, how = fields[number]
        if isinstance(value, int) != (how in ("i", "b")):
            raise ProtobufError(f"{name}.{key} has the wrong wire type")
        if how.startswith("["):
            item = value.decode() if how == "[s]" else _message(value, how[1:])
            out.setdefault(key, []).append(item)
        elif how == "{s}":
            entry = dict(_fields(value))
            k, v = entry.get(1, b""), entry.get(2, b"")
            if not isinstance(k, bytes) or not isinstance(v, bytes):
                raise ProtobufError(f"{name}.{key} is not a map of strings")
            out.setdefault(key, {})[k.decode()] = v.decode()
        elif how == "s":
            out[key] = value.decode()
        elif how == "i":
            out[key] = value - 2**64 if value >= 2**63 else value
        elif how == "b":
            out[key] = bool(value)
        elif how == "raw":
            out[key] = value
        elif how == "t":
            seconds = dict(_fields(value)).get(1, 0)
            if not isinstance(seconds, int) or not 0 <= seconds < 2**37:
                raise ProtobufError(f"{name}.{key} is not a time")
            out[key] = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif how == "ios":
            ios = dict(_fields(value))
            text, number = ios.get(3, b""), ios.get(2, 0)
            if not isinstance(text, bytes) or not isinstance(number, int):
                raise ProtobufError(f"{name}.{key} is not an int-or-string")
            out[key] = text.decode() if ios.get(1) == 1 else number
        else:
            out[key] = _message(value, how)
    # proto2 writes unset optional fields as their zero value; JSON (omitempty) leaves them out.
    return {k: v for k, v in out.items() if v not in ("", 0)}  # False == 0 goes too


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs: ints for varints, bytes for length-delimited fields."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(data):
        tag, i = _varint(data, i)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > len(data):
                raise ProtobufError("truncated protobuf field")
            value, i = data[i:i + size], i + size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, i = int.from_bytes(data[i:i + width], "little"), i + width
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProtobufError("truncated protobuf varint")
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
