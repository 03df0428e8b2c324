#!/usr/bin/env bash
# Give every site read access to the whole mesh and write access to its own prefix only.
#
#   deploy/etcd/rbac.sh ENDPOINT CERT_DIR SITE [SITE...]
#
# CERT_DIR holds ca.crt and root.crt/root.key (`meshfed etcd client-cert root`). Each site's agent
# then uses the client certificate from `meshfed etcd client-cert site-<SITE>`: etcd takes the
# certificate's CN as the user name (etcd --client-cert-auth). Safe to run again: existing users
# and roles are kept and their permissions granted again. Enables etcd auth at the end.
set -euo pipefail
endpoint=$1 certs=$2
shift 2
PREFIX=${MESHFED_PREFIX:-/meshfed/v1}
ctl() {
    ETCDCTL_API=3 etcdctl --endpoints="https://$endpoint" --cacert="$certs/ca.crt" \
        --cert="$certs/root.crt" --key="$certs/root.key" "$@"
}
ctl user get root >/dev/null 2>&1 || ctl user add root --no-password >/dev/null
ctl user grant-role root root >/dev/null 2>&1 || true
for site in "$@"; do
    role="site-$site"
    ctl role get "$role" >/dev/null 2>&1 || ctl role add "$role" >/dev/null
    ctl role grant-permission "$role" read --prefix=true "$PREFIX/" >/dev/null
    ctl role grant-permission "$role" readwrite "$PREFIX/sites/$site" >/dev/null
    ctl role grant-permission "$role" readwrite --prefix=true "$PREFIX/sites/$site/" >/dev/null
    # VIP allocations are shared by every site, guarded by compare-and-swap. Other mesh-wide objects
    # (traffic policies under $PREFIX/mesh/policies/) are the operator's: sites only read them.
    ctl role grant-permission "$role" readwrite --prefix=true "$PREFIX/mesh/vips/" >/dev/null
    ctl user get "$role" >/dev/null 2>&1 || ctl user add "$role" --no-password >/dev/null
    ctl user grant-role "$role" "$role" >/dev/null
    echo "etcd user $role: read $PREFIX/, write $PREFIX/sites/$site[/...] and $PREFIX/mesh/vips/"
done
ctl auth enable >/dev/null 2>&1 || true
echo "etcd auth enabled"
