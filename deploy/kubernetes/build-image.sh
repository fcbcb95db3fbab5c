#!/usr/bin/env bash
# Builds the DaemonSet image without a container registry: a Debian base made by debootstrap from the
# mirror apt already uses, then `buildah bud --isolation chroot` of the Containerfile on top of it.
#   deploy/kubernetes/build-image.sh [WORKDIR]        (as root; Debian packages: buildah debootstrap)
# Everything lives under WORKDIR (default $NODEGUARD_IMAGE_DIR, else /var/tmp/nodeguard-image): buildah's
# storage is WORKDIR/storage, never /var/lib/containers. A second run reuses the base and the cached layers.
# Use the image with `buildah --root WORKDIR/storage --runroot WORKDIR/run ...`; `rm -rf WORKDIR` removes all.
set -euo pipefail
cd "$(dirname "$0")/../.."

[ $# -le 1 ] || { echo "usage: build-image.sh [WORKDIR]" >&2; exit 2; }
work=$(realpath -m "${1:-${NODEGUARD_IMAGE_DIR:-/var/tmp/nodeguard-image}}")
[ ! -e "$work" ] || [ -d "$work" ] || { echo "build-image.sh: $work is not a directory" >&2; exit 2; }
image=localhost/nodeguard:0.1.0
. /etc/os-release
release=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
base=localhost/nodeguard-base:$release
for tool in buildah debootstrap; do
  command -v "$tool" >/dev/null || { echo "build-image.sh: $tool is missing (apt-get install $tool)" >&2; exit 2; }
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca" ] || { echo "build-image.sh: no CA bundle at $ca for pip (apt-get install ca-certificates)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-image.sh: needs root (debootstrap, buildah's chroot isolation)" >&2; exit 2; }

bah() { buildah --root "$work/storage" --runroot "$work/run" --storage-driver overlay "$@"; }

# "URI SUITE" for every deb source of $release and its -updates/-security suites, from apt's own lists
# (one-line .list files and deb822 .sources files alike).
sources() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  awk -v rel="$release" '
    function want(s) { return s == rel || s == rel "-updates" || s == rel "-security" }
    function flush(  i, j, u, s) {
      if (types ~ /(^| )deb( |$)/) { split(uris, u, " "); split(suites, s, " ")
        for (i in u) for (j in s) if (want(s[j])) print u[i], s[j] }
      types = uris = suites = "" }
    FNR == 1 { flush() }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($1 == "Types:") { $1 = ""; types = $0 } else if ($1 == "URIs:") { $1 = ""; uris = $0 }
      else if ($1 == "Suites:") { $1 = ""; suites = $0 }
      next }
    $1 == "deb" { sub(/\[[^]]*\]/, ""); if (want($3)) print $2, $3 }
    END { flush() }' "${files[@]}" 2>/dev/null | awk '!seen[$0]++'
}

# The base: debootstrap minbase, without docs, man pages, locales or apt lists, its sources.list apt's own.
make_base() {
  local rootfs="$work/rootfs" mirror ctr mnt
  mirror=$(sources | awk -v rel="$release" '$2 == rel { print $1; exit }')
  [ -n "$mirror" ] || { echo "build-image.sh: no deb source for $release in /etc/apt/sources.list(.d)" >&2; exit 2; }
  rm -rf "$rootfs"
  echo "debootstrap --variant=minbase $release from $mirror"
  debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$work/debootstrap.log" \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  sources | while read -r uri suite; do echo "deb $uri $suite main"; done >"$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info}/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  ctr=$(bah from scratch)
  mnt=$(bah mount "$ctr")
  tar -C "$rootfs" -c . | tar -C "$mnt" -x
  bah umount "$ctr" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  bah commit --quiet --rm "$ctr" "$base" >/dev/null
  rm -rf "$rootfs"
}

mkdir -p "$work"
start=$SECONDS
bah images --quiet "$base" >/dev/null 2>&1 || make_base
# pip in the build trusts what the host trusts (a proxy's CA, say): the host's bundle is the secret "ca",
# mounted for pip's step only (Debian's pip reads that path) and in no layer.
bah bud --isolation chroot --layers --force-rm --quiet --secret "id=ca,src=$ca" --build-arg "BASE=$base" \
  -f deploy/kubernetes/Containerfile -t "$image" . >/dev/null
echo "built $image in $((SECONDS - start)) s under $work"
bah images "$image"
