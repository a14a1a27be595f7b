#!/usr/bin/env bash
# Least privilege in etcd for bluegreen apps: creates a role and a user per component and
# enables etcd auth. It is idempotent (run it again to add an app, a host or an LB), run as etcd's
# root, with etcdctl's usual variables pointing at the cluster (ETCDCTL_ENDPOINTS, ETCDCTL_CACERT,
# ETCDCTL_CERT, ETCDCTL_KEY, and ETCDCTL_USER=root:<password> once auth is on).
#
#   deploy/etcd-auth.sh --app shop --hosts "host-a host-b" --lbs "lb-1 lb-2" --out /root/bluegreen-etcd-users
#   deploy/etcd-auth.sh --apps "shop api" --hosts "host-a host-b" --lbs "lb-1 lb-2" --out DIR
#
# --app: users per app, as below. --apps: hosts and LBs shared by several apps get one user each
# across the listed apps (bluegreen-agent-<host>, bluegreen-sidecar-<lb>) holding that host's or
# LB's own keys in every listed app; coordinators and auditors stay per app, so a CI job for shop
# cannot deploy api. Dropping an app from a later --apps list revokes nothing: remove its
# permissions with `etcdctl role revoke-permission`.
#
# Roles and users (user name = role name, so a client certificate whose CN is that name works too):
#   bluegreen-<app>-agent-<host>   read <prefix>/<app>/, write only hosts/<host>, host-members/<host>,
#                                  health/<host>/ and host-leaving/<host> (deleted when it retires
#                                  the app from the host)
#   bluegreen-<app>-sidecar-<lb>   read <prefix>/<app>/, write only lbs/<lb>, lb-alive/<lb>,
#                                  lb-stats/<lb> (its request counts, for canaries) and
#                                  ~detail/lb-upstreams/<lb> (the upstreams its ack counts)
#   bluegreen-<app>-coordinator    read and write <prefix>/<app>/; read the app index <prefix>:apps/
#   bluegreen-<app>-auditor        read <prefix>/<app>/ and the app index
# The app index <prefix>:apps/<app> (written here) names the apps for `coordinator apps`.
# Each user's password is written to <out>/<user>.password (mode 0600): give the agent of
# host-a its file as etcd_password_file, and so on. With --no-passwords the users have none and
# authenticate with client certificates only (CN = user name). The first run also creates the
# root user (password in <out>/root.password) and enables auth.
set -euo pipefail

APPS="" SHARED=0 PREFIX="/bluegreen" HOSTS="" LBS="" OUT="" NO_PASSWORDS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --app) APPS=$2; shift 2 ;;
        --apps) APPS=$2; SHARED=1; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --hosts) HOSTS=$2; shift 2 ;;
        --lbs) LBS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --no-passwords) NO_PASSWORDS=1; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "etcd-auth.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
name_rule='^[A-Za-z0-9._-]{1,128}$'
[[ -n $APPS ]] || { echo "etcd-auth.sh: --app NAME or --apps \"NAME ...\" is required" >&2; exit 2; }
for app in $APPS; do
    [[ $app =~ $name_rule ]] || { echo "etcd-auth.sh: app $app is not a valid name ($name_rule)" >&2; exit 2; }
done
[[ $SHARED == 1 || $APPS != *" "* ]] || { echo "etcd-auth.sh: --app takes one app; several share hosts with --apps" >&2; exit 2; }
[[ -n $OUT ]] || { echo "etcd-auth.sh: --out DIR is required (the users' password files go there)" >&2; exit 2; }
for n in $HOSTS $LBS; do
    [[ $n =~ $name_rule ]] || { echo "etcd-auth.sh: $n is not a valid host or LB name" >&2; exit 2; }
done
mkdir -p "$OUT" && chmod 700 "$OUT"

# A user of the same name as its role, with a random password unless --no-passwords.
user() {
    local name=$1
    if etcdctl user get "$name" >/dev/null 2>&1; then
        return
    fi
    if [[ $NO_PASSWORDS == 1 && $name != root ]]; then
        etcdctl user add "$name" --no-password >/dev/null
    else
        local password
        password=$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)
        (umask 077; printf '%s\n' "$password" >"$OUT/$name.password")
        etcdctl user add "$name" --new-user-password="$password" --interactive=false >/dev/null
    fi
    if [[ $name != root ]]; then
        etcdctl user grant-role "$name" "$name" >/dev/null
    fi
}

role() {
    local name=$1
    etcdctl role get "$name" >/dev/null 2>&1 || etcdctl role add "$name" >/dev/null
}

# The root user first (etcd refuses `auth enable` without it).
if ! etcdctl user get root >/dev/null 2>&1; then
    user root
    etcdctl user grant-role root root >/dev/null
fi

# The app index: the app names, beside the prefix (no app can be named like it), so that
# `coordinator apps` and a mistyped --app can name the apps under roles that may not read the
# whole prefix.
INDEX="${PREFIX%/}:apps/"

# The agent's or sidecar's role for one host or LB: per app, or (--apps) one across the apps.
member_role() {
    local kind=$1 name=$2 app=$3
    if [[ $SHARED == 1 ]]; then
        echo "bluegreen-$kind-$name"
    else
        echo "bluegreen-$app-$kind-$name"
    fi
}

for APP in $APPS; do
    BASE="$PREFIX/$APP/"
    etcdctl put "$INDEX$APP" "$APP" >/dev/null

    role "bluegreen-$APP-coordinator"
    etcdctl role grant-permission --prefix=true "bluegreen-$APP-coordinator" readwrite "$BASE" >/dev/null
    etcdctl role grant-permission --prefix=true "bluegreen-$APP-coordinator" read "$INDEX" >/dev/null
    user "bluegreen-$APP-coordinator"

    role "bluegreen-$APP-auditor"
    etcdctl role grant-permission --prefix=true "bluegreen-$APP-auditor" read "$BASE" >/dev/null
    etcdctl role grant-permission --prefix=true "bluegreen-$APP-auditor" read "$INDEX" >/dev/null
    user "bluegreen-$APP-auditor"

    for host in $HOSTS; do
        r=$(member_role agent "$host" "$APP")
        role "$r"
        etcdctl role grant-permission --prefix=true "$r" read "$BASE" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}hosts/$host" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}host-members/$host" >/dev/null
        # Deleted by the agent as the last step of retiring the app from this host.
        etcdctl role grant-permission "$r" readwrite "${BASE}host-leaving/$host" >/dev/null
        etcdctl role grant-permission --prefix=true "$r" readwrite "${BASE}health/$host/" >/dev/null
        user "$r"
    done

    for lb in $LBS; do
        r=$(member_role sidecar "$lb" "$APP")
        role "$r"
        etcdctl role grant-permission --prefix=true "$r" read "$BASE" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}lbs/$lb" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}lb-alive/$lb" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}lb-stats/$lb" >/dev/null
        etcdctl role grant-permission "$r" readwrite "${BASE}~detail/lb-upstreams/$lb" >/dev/null
        user "$r"
    done
done

# etcd 3.4 has no `auth status`: enabling twice is harmless.
if etcdctl auth enable >/dev/null 2>&1; then
    echo "etcd-auth.sh: auth enabled; root's password is in $OUT/root.password"
fi
echo "etcd-auth.sh: roles and users for $APPS under $PREFIX/ are in place; passwords in $OUT"
