"""deploy/kubernetes: every manifest validates offline against the Kubernetes 1.30 schemas (strict:
unknown fields are errors), and says what the daemon needs and nothing more."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from guard import lastgood, persist
from guard.metrics import parse_listen
from guard.policy.load import parse_policy
from netlab import ROOT

K8S = ROOT / "deploy" / "kubernetes"
VERSION = "1.30.0"
MANIFESTS = sorted(K8S.glob("*.yaml"))


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.fixture
def ds() -> dict:
    return load("daemonset.yaml")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_catches_a_misspelt_field(ds):
    bad = copy.deepcopy(ds)
    sc = bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    sc["capabilites"] = sc.pop("capabilities")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, VERSION, strict=True)


def test_the_configmap_is_the_default_policy_and_parses():
    text = load("configmap.yaml")["data"]["config.yaml"]
    assert text == (ROOT / "rules" / "default.yaml").read_text()
    parse_policy(text, "configmap.yaml")


def test_the_daemonset_runs_unprivileged_with_two_capabilities_on_every_node(ds):
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["automountServiceAccountToken"] is False
    assert load("serviceaccount.yaml")["automountServiceAccountToken"] is False


def test_the_daemonset_mounts_the_policy_the_attack_log_the_state_and_the_iptables_lock(ds):
    pod = ds["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config, secret = (src for src in volumes["config"]["projected"]["sources"])
    assert config["configMap"]["name"] == load("configmap.yaml")["metadata"]["name"]
    assert mounts["config"]["mountPath"] == "/etc/nodeguard" and mounts["config"]["readOnly"] is True
    assert volumes["config"]["projected"]["defaultMode"] == 0o444  # root-owned, not writable: configfile accepts it
    # the CrowdSec secrets land where the shipped policy names them, root's alone, and only if the Secret exists
    policy = parse_policy(load("configmap.yaml")["data"]["config.yaml"], "configmap.yaml")
    assert secret["secret"]["optional"] is True
    assert {(f"/etc/nodeguard/{i['path']}", i["mode"]) for i in secret["secret"]["items"]} == {
        (policy.crowdsec.api_key_file, 0o400), (policy.crowdsec.password_file, 0o400)}
    assert volumes["attack-log"]["hostPath"]["path"] == mounts["attack-log"]["mountPath"] == "/var/log/nodeguard"
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert mounts["xtables-lock"]["mountPath"] == "/run/xtables.lock"
    policy = parse_policy(load("configmap.yaml")["data"]["config.yaml"], "configmap.yaml")
    assert Path(policy.sampler.log).parent == Path("/var/log/nodeguard")
    assert Path(policy.watcher.state_file).parent == Path(mounts["run"]["mountPath"])
    # the snapshot of bans outlives the pod, on the node: a restarted pod restores them
    snapshot = persist.path_for(policy, lastgood.DEFAULT)
    assert volumes["state"]["hostPath"] == {"path": str(snapshot.parent), "type": "DirectoryOrCreate"}
    assert mounts["state"]["mountPath"] == str(snapshot.parent)


def test_probes_and_scrapes_reach_the_metrics_listener(ds):
    """With hostNetwork kubelet probes the pod IP, which is the node IP: the listener binds
    $(HOST_IP) (downward API), a non-loopback address that needs allow_remote."""
    tmpl = ds["spec"]["template"]
    (c,) = tmpl["spec"]["containers"]
    port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert tmpl["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert next(e for e in c["env"] if e["name"] == "HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    listen = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--metrics-listen="))
    node_ip_listen = listen.replace("$(HOST_IP)", "10.0.0.7")
    assert parse_listen(node_ip_listen, allow_remote="--metrics-allow-remote" in c["args"]) == ("10.0.0.7", port)
    with pytest.raises(ValueError):
        parse_listen(node_ip_listen, allow_remote=False)


def test_liveness_is_the_healthz_verb_of_the_images_entrypoint_on_the_run_dirs_heartbeat(ds):
    """Liveness depends on no TCP port a local user could crowd: an exec of ``nodeguard healthz``,
    whose default heartbeat file is where the policy's state file puts it, in the pod's /run/nodeguard."""
    from guard.cli.daemon import healthz
    from guard.liveness import heartbeat_path

    (c,) = ds["spec"]["template"]["spec"]["containers"]
    entrypoint = next(line for line in (K8S / "Containerfile").read_text().splitlines()
                      if line.startswith("ENTRYPOINT"))
    command = c["livenessProbe"]["exec"]["command"]
    assert json.loads(entrypoint.split(None, 1)[1]) == command[:1] and command[1:] == ["healthz"]
    policy = parse_policy(load("configmap.yaml")["data"]["config.yaml"], "configmap.yaml")
    default = next(p for p in healthz.params if p.name == "path").default
    assert Path(default) == heartbeat_path(policy.watcher.state_file)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert Path(default).parent == Path(mounts["run"])


def test_no_rbac_is_shipped():
    kinds = {doc["kind"] for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text())}
    assert kinds == {"ConfigMap", "DaemonSet", "ServiceAccount"}


def test_the_image_runs_the_daemon_from_the_venv_without_the_build_tools():
    """The final stage installs the runtime packages and copies the venv built in the first stage, whose
    compiler and headers stay behind (tests/test_image.py builds the image and looks inside)."""
    text = (K8S / "Containerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["/opt/nodeguard/bin/nodeguard"\]\nCMD \["run"\]$', text, re.M)
    final = text.rsplit("\nFROM ", 1)[1]
    for pkg in ("libnftables1", "nftables", "iptables", "ipset", "python3", "libnetfilter-queue1", "iproute2"):
        assert re.search(rf"install .*\b{pkg}\b", final), pkg
    assert not re.search(r"\bgcc\b|-dev\b|python3-venv", final)
    assert "COPY --from=build /opt/nodeguard /opt/nodeguard" in final
