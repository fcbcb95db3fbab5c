"""The DaemonSet image, built for real by deploy/kubernetes/build-image.sh (debootstrap + buildah, no
registry), runs: its filesystem, chrooted with the DaemonSet's read-only root and volumes, inside a test
namespace, installs nodeguard's rules with each backend and removes them again.

Marked ``image`` and left out unless pytest gets ``--image``: a fresh build takes minutes. With
NODEGUARD_IMAGE_DIR naming the work dir of an earlier build, the build is cached and costs seconds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from netlab import BACKENDS, ROOT, add_uplink

pytestmark = pytest.mark.image

K8S = ROOT / "deploy" / "kubernetes"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the DaemonSet's pod does without: a compiler and headers, pip, apt's lists, docs and man pages.
ABSENT = ("usr/bin/gcc", "usr/bin/cc", "usr/include/python3.11", "opt/nodeguard/bin/pip")


@pytest.fixture(scope="module")
def work(tmp_path_factory, kernel):
    """buildah's storage for the build: NODEGUARD_IMAGE_DIR (kept, so the next run is cached), else a
    temporary dir removed afterwards (its layers take hundreds of MB)."""
    kept = os.environ.get("NODEGUARD_IMAGE_DIR")
    if kept:
        yield Path(kept)
        return
    path = tmp_path_factory.mktemp("image")
    yield path
    shutil.rmtree(path)


def buildah(work: Path, *args: str) -> str:
    res = subprocess.run(["buildah", "--root", str(work / "storage"), "--runroot", str(work / "run"),
                          "--storage-driver", "overlay", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"buildah {' '.join(args)} -> {res.returncode}: {res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def image(work) -> str:
    """Builds the image (outside the machine lock: no netfilter is touched); returns its name."""
    res = subprocess.run([str(K8S / "build-image.sh"), str(work)], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"build-image.sh -> {res.returncode}\n{res.stdout}\n{res.stderr}"
    print(res.stdout)  # the build time and `buildah images`: pytest -s shows them
    return re.search(r"^built (\S+) in \d+ s", res.stdout, re.M)[1]


@pytest.fixture
def rootfs(work, image):
    """The image's filesystem, mounted from a working container that is removed afterwards (with
    whatever the chroot wrote into it)."""
    ctr = buildah(work, "from", "--quiet", "--pull-never", image).strip()
    try:
        yield Path(buildah(work, "mount", ctr).strip())
    finally:
        buildah(work, "rm", ctr)


def pod_mounts(policy_dir: Path, lock: Path) -> list[tuple[str, str | None]]:
    """(mountPath, host source or None for an empty tmpfs) for each of the DaemonSet's volumes."""
    pod = yaml.safe_load((K8S / "daemonset.yaml").read_text())["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    out = []
    for m in pod["containers"][0]["volumeMounts"]:
        v = volumes[m["name"]]
        source = (str(policy_dir) if "projected" in v else
                  str(lock) if v.get("hostPath", {}).get("type") == "FileOrCreate" else None)
        out.append((m["mountPath"], source))
    return out


# In ``ip netns exec``'s own mount namespace (its mounts vanish with it): the root read-only, as
# readOnlyRootFilesystem makes it, /proc, /sys and /dev as a runtime gives them, the volumes on top.
CHROOT = r"""
set -e
mnt=$1; shift
for spec in $MOUNTS; do
  target=$mnt${spec%%=*} source=${spec#*=}
  if [ -f "$source" ]; then mkdir -p "${target%/*}"; touch "$target"; else mkdir -p "$target"; fi
done
mount --bind "$mnt" "$mnt"
mount -o remount,bind,ro "$mnt"
mount -t proc proc "$mnt/proc"
mount --rbind /sys "$mnt/sys"
mount --rbind /dev "$mnt/dev"
for spec in $MOUNTS; do
  target=$mnt${spec%%=*} source=${spec#*=}
  if [ "$source" = - ]; then mount -t tmpfs -o mode=0755 tmpfs "$target"; else mount --bind "$source" "$target"; fi
done
exec chroot "$mnt" /usr/bin/env -i PATH="$PATH" "$@"
"""


@contextmanager
def pod_chroot(ns, rootfs: Path, tmp_path: Path):
    """``run(*argv)``: argv in the image's filesystem, as the DaemonSet's container sees it, in ``ns``."""
    policy_dir, lock = tmp_path / "policy", tmp_path / "xtables.lock"
    policy_dir.mkdir()
    lock.touch()
    mounts = " ".join(f"{path}={source or '-'}" for path, source in pod_mounts(policy_dir, lock))
    # the mountpoints are made in the working container's own layer, before the root turns read-only
    assert (rootfs / "opt/nodeguard/bin/nodeguard").exists()

    def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return ns.run(["env", f"MOUNTS={mounts}", f"PATH={PATH}", "sh", "-c", CHROOT, "sh", str(rootfs), *argv],
                      check=check)
    yield run, policy_dir / "config.yaml"


def test_the_image_holds_the_netfilter_tools_and_no_build_tools(rootfs):
    for path in ABSENT:
        assert not (rootfs / path).exists(), f"the image holds {path}"
    assert not any((rootfs / "var/lib/apt/lists").glob("*_Packages")), "the image holds apt's lists"
    docs = [p for d in ("usr/share/doc", "usr/share/man") for p in (rootfs / d).rglob("*")
            if p.is_file() and p.name != "copyright"]  # dangling links to docs are free
    assert not docs, f"the image holds {len(docs)} docs and man pages, {docs[:3]} ..."
    for tool in ("nft", "iptables-nft", "iptables-legacy", "ip6tables-legacy-restore", "ipset", "ip", "tc"):
        assert any((rootfs / d / tool).exists() for d in ("usr/sbin", "sbin", "usr/bin")), f"{tool} missing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_images_nodeguard_applies_and_uninstalls_in_a_test_namespace(ns, rootfs, tmp_path, backend):
    """The image's own nodeguard, its own nft/iptables/ipset, the ConfigMap's policy (for the iptables
    backends with the flavour set); the host's tools read the namespace's ruleset afterwards."""
    add_uplink(ns)
    policy_data = yaml.safe_load(yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]["config.yaml"])
    if backend != "nft":
        policy_data |= {"backend": "iptables", "iptables": {"flavour": backend.split("-", 1)[1]}}
    with pod_chroot(ns, rootfs, tmp_path) as (run, policy):
        policy.write_text(yaml.safe_dump(policy_data))
        for tool in (["nft", "--version"], ["iptables-legacy", "--version"], ["iptables-nft", "--version"],
                     ["ipset", "--version"]):
            run(*tool)
        out = run("/opt/nodeguard/bin/nodeguard", "apply", "--json").stdout
        assert f'"backend": "{backend}"' in out and '"ngu0"' in out, out
        assert ours(ns, backend), f"no nodeguard rules in {ns.name} after the image's apply"
        run("/opt/nodeguard/bin/nodeguard", "uninstall")
        assert not ours(ns, backend), f"nodeguard rules left in {ns.name} after the image's uninstall"


def ours(ns, backend: str) -> bool:
    """Does the namespace hold nodeguard's table (nft) or chains (iptables of that flavour)?"""
    if backend == "nft":
        return any(o.get("table", {}).get("name") == "nodeguard" for o in ns.nft_json("tables"))
    flavour = backend.split("-", 1)[1]
    return ":NODEGUARD-" in ns.run([f"iptables-{flavour}-save"]).stdout
