#!/usr/bin/env bash
# ctedge offline installer: run from the unpacked archive (make bundle), as root, with no network.
#
#   sudo ./install.sh [--profile NAME] [--python PYTHON]     install or upgrade under /opt/ctedge
#   ./install.sh --prefix DIR [...]                          the same under DIR, without systemd or users
#   sudo /opt/ctedge/current/install.sh --uninstall [--purge]
#
# Software goes to /opt/ctedge/releases/<version>-<id> (/opt/ctedge/current points at it), the
# profile to /etc/ctedge/ctedge.yaml, patient data to /srv/ctedge/{inbox,outbox,results}. An
# upgrade replaces the software only: data folders, users, the token file and an existing
# profile are left as they are. --uninstall keeps /etc/ctedge, /srv/ctedge and the user
# unless --purge is given.
set -euo pipefail

usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
prefix="" profile="" python="python3" service_user="ctedge" uninstall=0 purge=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a folder"; prefix=$(realpath -m "$2"); shift 2 ;;
        --profile) [ $# -ge 2 ] || die "--profile needs a name"; profile=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; python=$2; shift 2 ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge goes with --uninstall"

app="$prefix/opt/ctedge"
etc="$prefix/etc/ctedge"
data="$prefix/srv/ctedge"
units="/etc/systemd/system"
services=(ctedge-serve ctedge-watch)
systemd=0
if [ -z "$prefix" ]; then
    [ "$(id -u)" = 0 ] || die "run as root (or use --prefix DIR for an install without systemd and users)"
    systemd=1
else
    service_user=$(id -un)
fi

if [ "$uninstall" = 1 ]; then
    if [ "$systemd" = 1 ]; then
        for s in "${services[@]}"; do
            systemctl disable --now "$s.service" 2>/dev/null || true
            rm -f "$units/$s.service"
        done
        systemctl daemon-reload 2>/dev/null || true
        rm -f /usr/local/bin/ctedge
    fi
    rm -rf "$app"
    echo "Removed the software ($app)."
    if [ "$purge" = 1 ]; then
        rm -rf "$etc" "$data"
        echo "Purged the profile ($etc) and the patient data ($data)."
        if [ "$systemd" = 1 ] && userdel "$service_user" 2>/dev/null; then echo "Removed the user $service_user."; fi
    else
        echo "Kept the profile ($etc) and the patient data ($data); remove them with --uninstall --purge."
    fi
    exit 0
fi

# --- checks: archive intact, CPU and Python covered by the archive -------------------------------
if [ ! -f "$here/BUNDLE.json" ] || [ ! -d "$here/wheels" ]; then
    die "$here is not an unpacked ctedge archive (no BUNDLE.json or wheels/): run the archive's install.sh"
fi
(cd "$here" && sha256sum --quiet --strict -c SHA256SUMS) \
    || die "a file of the archive does not match SHA256SUMS (named above); copy the archive again"
command -v "$python" >/dev/null || die "no Python interpreter '$python' (give one with --python)"
read -r version arch pythons pip_wheel < <("$python" -c '
import json, sys
b = json.load(open(sys.argv[1]))
print(b["version"], b["arch"], ",".join(b["pythons"]), b["pip"])' "$here/BUNDLE.json")
[ "$(uname -m)" = "$arch" ] || die "this archive is for $arch; this machine is $(uname -m)"
py_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
py_real=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
case "$py_real" in
    /root/*|/home/*) [ "$systemd" = 0 ] \
        || die "$python is $py_real: the services (ProtectHome=yes, user $service_user) cannot run it; use a system Python such as /usr/bin/python3" ;;
esac
case ",$pythons," in
    *",$py_version,"*) ;;
    *) die "$python is Python $py_version; this archive has wheels for Python $pythons (choose one with --python)" ;;
esac
if [ -z "$profile" ]; then
    case "$arch" in aarch64) profile=jetson-nano ;; *) profile=cpu-minipc ;; esac
fi
if [ ! -f "$here/profiles/$profile.yaml" ]; then
    available=$(for f in "$here"/profiles/*.yaml; do basename "$f" .yaml; done | tr '\n' ' ')
    die "no device profile '$profile' in the archive; available: $available"
fi

# --- software: a new release folder, then switch /opt/ctedge/current to it ---------------------
# The id changes with the archive's contents and the interpreter: another Python means another release.
release_id="$version-$({ cat "$here/requirements.lock" "$here/SHA256SUMS"; echo "$py_real"; } | sha256sum | cut -c1-12)"
release="$app/releases/$release_id"
if [ -f "$release/.complete" ]; then
    echo "ctedge $release_id is already installed in $release; checking the rest."
else
    echo "Installing ctedge $release_id into $release (Python $py_version, no network)..."
    echo "[1/3] installing $(grep -c '==' "$here/requirements.lock") locked wheels with pip (about 40 s; pip names each one)"
    rm -rf "$release"
    mkdir -p "$app/releases"
    "$python" -m venv --without-pip "$release/venv"
    # pip runs from its wheel, ignoring any pip configuration of this machine: only the archive's wheels,
    # each checked against the lock's sha256.
    env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
        "$release/venv/bin/python" "$here/tools/$pip_wheel/pip" install --isolated --progress-bar off --no-index \
        --find-links "$here/wheels" --require-hashes --no-cache-dir --disable-pip-version-check \
        --no-warn-script-location -r "$here/requirements.lock" \
        || { rm -rf "$release"; die "pip could not install the archive's wheels (see above); nothing was changed"; }
    echo "[2/3] copying $(find "$here/models" -name '*.tflite' | wc -l | tr -d ' ') model files, the profiles and the sample"
    cp -R "$here/models" "$here/profiles" "$here/sample" "$here/BUNDLE.json" "$release/"
    install -m 0755 "$here/install.sh" "$release/install.sh"
    cp -R "$here/installer" "$release/installer"
    touch "$release/.complete"
fi
ln -sfn "releases/$release_id" "$app/current.new"
mv -T "$app/current.new" "$app/current"
ctedge="$app/current/venv/bin/ctedge"

echo "[3/3] service user, data folders, profile and units"
# --- service user and data folders (created when missing, never changed) ------------------------
owner=()
if [ "$systemd" = 1 ]; then
    if ! id "$service_user" >/dev/null 2>&1; then
        useradd --system --no-log-init --home-dir "$data" --no-create-home --shell /usr/sbin/nologin "$service_user"
        echo "Created the system user $service_user."
    fi
    owner=(-o "$service_user" -g "$service_user")
fi
for d in "$data" "$data/inbox" "$data/outbox" "$data/results"; do
    [ -d "$d" ] || install -d -m 0700 "${owner[@]}" "$d"
done

# --- profile and token file (written only when missing) ----------------------------------------
conf_owner=()
[ "$systemd" = 1 ] && conf_owner=(-o root -g "$service_user")
[ -d "$etc" ] || install -d -m 0750 "${conf_owner[@]}" "$etc"
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
"$app/current/venv/bin/python" "$here/installer/make_profile.py" "$app/current/profiles/$profile.yaml" \
    --models "$app/current/models" --results "$data/results" > "$fresh"
if [ ! -f "$etc/ctedge.yaml" ]; then
    install -m 0640 "${conf_owner[@]}" "$fresh" "$etc/ctedge.yaml"
    echo "Wrote the profile $etc/ctedge.yaml (from $profile)."
elif ! cmp -s "$fresh" "$etc/ctedge.yaml"; then
    install -m 0640 "${conf_owner[@]}" "$fresh" "$etc/ctedge.yaml.dist"
    echo "Kept your profile $etc/ctedge.yaml; this release's default is in $etc/ctedge.yaml.dist."
fi
if [ ! -f "$etc/ctedge.env" ]; then
    install -m 0640 "${conf_owner[@]}" "$here/installer/ctedge.env" "$etc/ctedge.env"
fi

# --- systemd units: enabled, started by the operator once the token and a login exist ------------
if [ "$systemd" = 1 ]; then
    for s in "${services[@]}"; do
        sed -e "s|@CTEDGE@|$ctedge|g" -e "s|@ETC@|$etc|g" -e "s|@DATA@|$data|g" -e "s|@USER@|$service_user|g" \
            "$here/installer/$s.service.in" > "$units/$s.service.new"
        chmod 0644 "$units/$s.service.new"
        mv "$units/$s.service.new" "$units/$s.service"
    done
    ln -sfn "$ctedge" /usr/local/bin/ctedge
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable "${services[@]/%/.service}" >/dev/null
        systemctl try-restart "${services[@]/%/.service}"   # an upgrade restarts services that were running
    else
        echo "systemd is not running here: the units are in $units but not enabled."
    fi
fi

# Old releases go last, once running services have been restarted on the new one.
for old in "$app"/releases/*; do
    [ "$old" = "$release" ] || rm -rf "$old"
done

run_as=""
[ "$systemd" = 1 ] && run_as="sudo -u $service_user "
cat <<EOF

ctedge $version is installed ($app/current -> releases/$release_id).
Try it on the bundled sample study:
  $ctedge predict $app/current/sample/COVID-19_P002 --config $etc/ctedge.yaml
Next steps:
  1. Set the API token: edit $etc/ctedge.env (CTEDGE_API_TOKEN=<a long random string>).
  2. Add a login for the web form:
       ${run_as}$ctedge serve --config $etc/ctedge.yaml --add-user NAME
  3. Check the box:
       ${run_as}$ctedge doctor --config $etc/ctedge.yaml --folder $data/inbox --folder $data/outbox
EOF
if [ "$systemd" = 1 ]; then
    cat <<EOF
  4. Start the services (enabled, so they also start at boot):
       systemctl start ctedge-serve ctedge-watch
     The server listens on the profile's server.host:port (127.0.0.1:8080 unless you change it);
     drop studies into $data/inbox, results appear in $data/outbox.
EOF
else
    cat <<EOF
  4. Run the server and the watcher yourself (no systemd in --prefix mode):
       (set -a; . $etc/ctedge.env; exec $ctedge serve --config $etc/ctedge.yaml)
       $ctedge watch $data/inbox --out $data/outbox --config $etc/ctedge.yaml
EOF
fi
