#!/usr/bin/env bash
# Build the Sensu Go runtime asset of sensu-plugins-kvm: see usage() below.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: build-asset.sh [-h] [--python PYTHON] [--sensu-plugin SPEC] [--url-base URL] [OUTDIR]

Builds OUTDIR/sensu-plugins-kvm-<version>-linux-amd64.tar.gz, a Sensu Go runtime asset, and
OUTDIR/<tarball>.sha512 (sha512sum format), then prints the tarball's path and its sha512 on
standard output (one line each). OUTDIR defaults to dist/ at the top of the source tree.

The tarball holds:
  bin/<command>   a POSIX sh wrapper per console script in setup.cfg: it finds the asset's root
                  from $0, puts <root>/lib first on PYTHONPATH and runs the command's main() under
                  the host's Python ($SENSU_KVM_PYTHON, default: python3 on PATH)
  lib/sensu_kvm   this project's package (copied from the tree as setup.cfg's package_dir maps it)
  lib/sensu_plugin and its .dist-info, the only dependency that is bundled (pure Python)

Not bundled, because they are compiled against the host's Python and libvirt: the host's Python
must provide libvirt's binding and psutil. Debian/Ubuntu: apt install python3 python3-libvirt
python3-psutil (RHEL family: python3-libvirt python3-psutil). check-memory-percent, the
guest-side check, needs psutil only. handler-kvm-remediate (run by sensu-backend) also needs
requests, which sensu-plugin's handler imports: python3-requests.
Python 3.9 or later. The tarball is pure Python and sh: "linux-amd64" is only its name.

The wrappers honour:
  SENSU_KVM_PYTHON  the Python to run (a name on PATH or an absolute path; default: python3)
  SENSU_KVM_DEBUG   when non-empty, say on stderr which Python ran and where sensu_kvm and
                    sensu_plugin were imported from
A module the host lacks, or a Python older than 3.9, gives one line and exit status 3.

Reproducible: files sorted, owner and group 0, modes 0755/0644, mtime $SOURCE_DATE_EPOCH
(default 2020-01-01), gzip without name or time stamp; the same tree and sensu-plugin version
give the same sha512.

options:
  -h, --help           show this help and exit
  --python PYTHON      the Python (with pip) that reads setup.cfg and installs sensu-plugin
                       (default: $PYTHON, else python3)
  --sensu-plugin SPEC  what pip installs into lib/ (default: sensu-plugin==0.8.0); pip's own
                       environment applies, e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=wheels/ offline
  --url-base URL       where the tarball will be published: also writes
                       OUTDIR/<tarball>.asset.yaml, the Asset resource with its url and sha512
                       filled in (default: https://assets.example.org/sensu-plugins-kvm/<version>)

example:
  packaging/sensu-go/build-asset.sh --url-base https://assets.example.org/kvm/0.1.0 /tmp/asset
  # /tmp/asset/sensu-plugins-kvm-0.1.0-linux-amd64.tar.gz
  # 6c1f...e2 (its sha512)
  # upload the tarball to the URL, then: sensuctl create -f /tmp/asset/sensu-plugins-kvm-0.1.0-linux-amd64.tar.gz.asset.yaml
EOF
}

die() {
  printf 'build-asset.sh: %s\n' "$*" >&2
  exit 1
}

python=${PYTHON:-python3}
sensu_plugin_spec=sensu-plugin==0.8.0
url_base=
outdir=
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --python) [ $# -ge 2 ] || die "--python needs a value"; python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    --sensu-plugin) [ $# -ge 2 ] || die "--sensu-plugin needs a value"; sensu_plugin_spec=$2; shift 2 ;;
    --sensu-plugin=*) sensu_plugin_spec=${1#*=}; shift ;;
    --url-base) [ $# -ge 2 ] || die "--url-base needs a value"; url_base=$2; shift 2 ;;
    --url-base=*) url_base=${1#*=}; shift ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$outdir" ] || die "more than one OUTDIR (see --help)"; outdir=$1; shift ;;
  esac
done
if [ $# -gt 0 ]; then
  [ -z "$outdir" ] && [ $# -eq 1 ] || die "more than one OUTDIR (see --help)"
  outdir=$1
fi

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd -P)
tree=$(CDPATH='' cd -- "$here/../.." && pwd -P)
[ -f "$tree/setup.cfg" ] || die "no setup.cfg in $tree"
outdir=${outdir:-$tree/dist}
command -v "$python" >/dev/null 2>&1 || die "$python not found (use --python)"
tar --version 2>/dev/null | grep -q 'GNU tar' || die "GNU tar is needed (--sort, --mtime, --owner)"
epoch=${SOURCE_DATE_EPOCH:-1577836800}
case $epoch in
  ''|*[!0-9]*) die "SOURCE_DATE_EPOCH is not a number of seconds: $epoch" ;;
  *) ;;
esac

# What to ship, from setup.cfg: the version, each package and its directory, each console script.
manifest=$("$python" - "$tree" <<'PY'
import ast
import configparser
import os
import re
import sys

tree = sys.argv[1]
cfg = configparser.ConfigParser(interpolation=None)
cfg.read(os.path.join(tree, "setup.cfg"), encoding="utf-8")


def lines(section, key):
    return [line.strip() for line in cfg.get(section, key, fallback="").splitlines() if line.strip()]


package_dir = {}
for line in lines("options", "package_dir"):
    name, _, directory = line.partition("=")
    package_dir[name.strip()] = directory.strip()


def directory_of(package):
    parts = package.split(".")
    for cut in range(len(parts), -1, -1):
        base = ".".join(parts[:cut])
        if base in package_dir or (base == "" and "" in package_dir):
            return os.path.join(package_dir.get(base, ""), *parts[cut:])
    return os.path.join(*parts)


version = cfg.get("metadata", "version")
if version.startswith("attr:"):
    module, _, attribute = version[len("attr:"):].strip().rpartition(".")
    path = os.path.join(tree, directory_of(module))
    path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
    with open(path, encoding="utf-8") as source:
        for node in ast.parse(source.read(), path).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == attribute for t in node.targets):
                version = ast.literal_eval(node.value)
                break
        else:
            sys.exit(f"no {attribute} = '...' in {path}")
if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z.+_-]*", version):
    sys.exit(f"odd version {version!r}")
print("version", version)
for package in lines("options", "packages"):
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", package):
        sys.exit(f"odd package name {package!r}")
    print("package", package, directory_of(package))
for line in lines("options.entry_points", "console_scripts"):
    name, _, target = (part.strip() for part in line.partition("="))
    module, _, function = target.partition(":")
    if not (re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)
            and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module) and re.fullmatch(r"[A-Za-z_]\w*", function)):
        sys.exit(f"odd console script {line!r}")
    print("script", name, module, function)
PY
) || die "cannot read $tree/setup.cfg"

version=$(printf '%s\n' "$manifest" | awk '$1 == "version" { print $2 }')
name=sensu-plugins-kvm-$version-linux-amd64.tar.gz
url_base=${url_base:-https://assets.example.org/sensu-plugins-kvm/$version}

umask 022
stage=$(mktemp -d "${TMPDIR:-/tmp}/sensu-kvm-asset.XXXXXX")
trap 'rm -rf -- "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"

# lib/: the project's packages, as setup.cfg maps them (sources only: no byte code, no tests).
while read -r kind package directory; do
  [ "$kind" = package ] || continue
  [ -f "$tree/$directory/__init__.py" ] || die "package $package: no $directory/__init__.py"
  target=$stage/lib/$(printf '%s' "$package" | tr . /)
  mkdir -p "$target"
  find "$tree/$directory" -maxdepth 1 -type f \( -name '*.py' -o -name py.typed \) -exec cp -- {} "$target/" \;
done <<EOF
$manifest
EOF

# lib/: sensu-plugin, without its declared dependencies: requests is only needed by handlers, and
# the 'argparse' distribution it names would shadow the standard library's from PYTHONPATH.
# (PyPI has only an sdist of sensu-plugin 0.8.0: pip builds it, and caches the wheel.)
PIP_ROOT_USER_ACTION=ignore "$python" -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-compile --target "$stage/lib" "$sensu_plugin_spec" >&2 ||
  die "pip could not install $sensu_plugin_spec (is pip available to $python?)"
rm -rf -- "$stage/lib/bin"
find "$stage/lib" -depth \( -name __pycache__ -o -name '*.pyc' \) -exec rm -rf -- {} +
[ -f "$stage/lib/sensu_plugin/check.py" ] || die "$sensu_plugin_spec did not provide sensu_plugin/check.py"

# Every shipped Python file must at least parse (under the build's Python).
find "$stage/lib" -name '*.py' -print0 | xargs -0 "$python" -c '
import ast, sys
for path in sys.argv[1:]:
    with open(path, "rb") as source:
        ast.parse(source.read(), path)
' || die "a Python file in lib/ does not parse"

# bin/: one wrapper per console script.
wrappers=0
while read -r kind command module function; do
  [ "$kind" = script ] || continue
  wrappers=$((wrappers + 1))
  cat >"$stage/bin/$command" <<EOF
#!/bin/sh
# $command, from the sensu-plugins-kvm $version Sensu Go asset (generated by build-asset.sh).
# Runs $module:$function with the asset's lib/ first on PYTHONPATH under the host's Python:
# \$SENSU_KVM_PYTHON, default python3 on PATH. That Python must have libvirt's binding and psutil
# (Debian/Ubuntu: python3-libvirt python3-psutil); they are not in the asset.
# SENSU_KVM_DEBUG=1 says on stderr which Python ran and where sensu_kvm was imported from.
set -eu
command=$command
module=$module
function=$function
EOF
  cat >>"$stage/bin/$command" <<'EOF'
self=$0
case $self in
  */*) ;;
  *) self=$(command -v "$self") || { echo "$command UNKNOWN: cannot find where $0 is"; exit 3; } ;;
esac
while [ -L "$self" ]; do
  link=$(readlink "$self" 2>/dev/null) || { echo "$command UNKNOWN: cannot resolve the symbolic link $self (readlink)"; exit 3; }
  case $link in
    /*) self=$link ;;
    *) self=${self%/*}/$link ;;
  esac
done
root=$(CDPATH='' cd -P -- "${self%/*}/.." && pwd)
python=${SENSU_KVM_PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "$command UNKNOWN: $python not found: install python3 (3.9 or later) with libvirt's binding and psutil, or set SENSU_KVM_PYTHON"
  exit 3
fi
PYTHONPATH=$root/lib${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH
# Not the working directory on sys.path ('' under -c): a stray file there must not shadow a module.
exec "$python" -c '
import os, sys
module, function, sys.argv = sys.argv[1], sys.argv[2], sys.argv[3:]
command = os.path.basename(sys.argv[0])
sys.path[:] = [entry for entry in sys.path if entry not in ("", ".")]
if sys.version_info < (3, 9):
    sys.stdout.write("%s UNKNOWN: %s is Python %s; sensu-plugins-kvm needs 3.9 or later (SENSU_KVM_PYTHON)\n"
                     % (command, sys.executable, sys.version.split()[0]))
    sys.exit(3)
try:
    main = getattr(__import__(module, fromlist=[function]), function)
except ImportError as err:
    missing = (getattr(err, "name", None) or "").split(".")[0]
    package = {"libvirt": "python3-libvirt", "psutil": "python3-psutil", "requests": "python3-requests"}.get(missing)
    hint = " (Debian/Ubuntu: apt install %s; the asset does not bundle it)" % package if package else ""
    sys.stdout.write("%s UNKNOWN: %s under %s%s\n" % (command, err, sys.executable, hint))
    sys.exit(3)
if os.environ.get("SENSU_KVM_DEBUG"):
    import sensu_kvm
    plugin = sys.modules.get("sensu_plugin")
    sys.stderr.write("%s: python %s %s; sensu_kvm %s; sensu_plugin %s\n" % (
        command, sys.executable, sys.version.split()[0], sensu_kvm.__file__,
        os.pathsep.join(getattr(plugin, "__path__", None) or ["not loaded"])))
sys.exit(main())
' "$module" "$function" "$self" "$@"
EOF
done <<EOF
$manifest
EOF
[ "$wrappers" -gt 0 ] || die "no console_scripts in setup.cfg"

# Normalised modes, then a sorted tarball with fixed owner and time stamps.
find "$stage" -type d -exec chmod 0755 {} +
find "$stage" -type f -exec chmod 0644 {} +
chmod 0755 "$stage"/bin/*
mkdir -p -- "$outdir"
outdir=$(CDPATH='' cd -- "$outdir" && pwd -P)
tarball=$outdir/$name
tar --sort=name --format=gnu --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  -C "$stage" -cf - bin lib | gzip -9n >"$stage/asset.tar.gz"
mv -f -- "$stage/asset.tar.gz" "$tarball"
sha512=$(sha512sum "$tarball" | awk '{ print $1 }')
printf '%s  %s\n' "$sha512" "$name" >"$tarball.sha512"

cat >"$tarball.asset.yaml" <<EOF
# The Asset for the tarball built next to this file: sensuctl create -f $name.asset.yaml
# once the tarball is at the url below. See packaging/sensu-go/asset.yaml.
type: Asset
api_version: core/v2
metadata:
  name: sensu-plugins-kvm
  namespace: default
spec:
  builds:
    - url: ${url_base%/}/$name
      sha512: $sha512
      filters:
        - entity.system.os == 'linux'
EOF

size=$(wc -c <"$tarball")
printf 'build-asset.sh: %s (%s bytes): bin/ %s wrappers, lib/ sensu_kvm and %s\n' "$name" "${size// /}" \
  "$wrappers" "$sensu_plugin_spec" >&2
printf '%s\n%s\n' "$tarball" "$sha512"
