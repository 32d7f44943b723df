"""deploy/kubernetes: the base and both overlays, rendered, validated
strictly and offline by kubernetes-validate (PyPI) against every
Kubernetes version deploy/README.md claims; a manifest made wrong on
purpose is caught; the custom resources (PodMonitor, SeccompProfile), for
which kubernetes-validate has no schema, are checked against what they
must agree with; and the overlays' pieces fit together (socket paths,
groups, ports, selectors, seccomp profile).

Rendering: kustomize_render.py (see there why), compared with
`kubectl kustomize` where kubectl is installed.
"""
import copy
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

RUNFILES = os.environ["WARMSTART_RUNFILES"]
sys.path.insert(0, os.path.join(RUNFILES, "deploy/tests"))
import kustomize_render  # noqa: E402

KUBERNETES = os.path.join(RUNFILES, "deploy/kubernetes")
README = os.path.join(RUNFILES, "deploy/README.md")
PROFILE = os.path.join(RUNFILES, "deploy/seccomp/warmstartd.json")
VALIDATE = os.path.join(os.path.dirname(sys.executable),
                        "kubernetes-validate")
KUSTOMIZATIONS = ["base", "overlays/sidecar", "overlays/node"]
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"),
                ("security-profiles-operator.x-k8s.io/v1beta1",
                 "SeccompProfile")}


def claimed_versions():
    """The versions in deploy/README.md's line
    'Kubernetes versions checked: 1.29 1.30 ...'."""
    with open(README) as f:
        match = re.search(r"^Kubernetes versions checked: ([0-9. ]+)$",
                          f.read(), re.M)
    assert match, "deploy/README.md names no Kubernetes versions"
    return match.group(1).split()


def render(name):
    return kustomize_render.render(os.path.join(KUBERNETES, name))


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def validate(docs, version, tmp_path):
    """kubernetes-validate --strict on `docs` written as one file: (exit
    status, {(kind, name): 'passed' | message}, warnings)."""
    path = tmp_path / f"rendered-{version}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = subprocess.run([VALIDATE, "--strict", "-k", version, str(path)],
                            capture_output=True, text=True, timeout=300)
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, lines


def test_readme_claims_versions_that_kubernetes_validate_has():
    versions = claimed_versions()
    assert "1.29" in versions  # native sidecars: restartPolicy: Always
    import kubernetes_validate.utils as utils
    shipped = {".".join(v.split(".")[:2]) for v in utils.all_versions()}
    assert set(versions) <= shipped, set(versions) - shipped


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renderer_matches_kubectl_kustomize(name, tmp_path):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (no Debian or PyPI package "
                    "ships it or kustomize): the renderer is not compared")
    # kustomize refuses files that are symlinks out of the kustomization
    # root, as Bazel's runfiles are: render a copy.
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree, symlinks=False)
    result = subprocess.run([kubectl, "kustomize", str(tree / name)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    theirs = result.stdout

    def canonical(docs):
        return sorted(json.dumps(d, sort_keys=True) for d in docs)

    assert canonical(render(name)) == canonical(yaml.safe_load_all(theirs))


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_manifest_validates_strictly(name, tmp_path):
    docs = render(name)
    for version in claimed_versions():
        rc, lines = validate(docs, version, tmp_path)
        assert rc == 0, "\n".join(lines)
        for doc in docs:
            kind, res = doc["kind"], doc["metadata"]["name"]
            if (doc["apiVersion"], kind) in CUSTOM_KINDS:
                # No schema shipped: a warning, checked below instead.
                assert any(f"Couldn't find schema for kind {kind}" in line
                           for line in lines), lines
            else:
                assert any(f"passed for resource {kind.lower()}/{res} "
                           f"against version {version}" in line
                           for line in lines), (version, kind, res, lines)
        # Nothing else is a warning.
        assert all("Couldn't find schema for kind" in line
                   for line in lines if line.startswith("WARN")), lines


def wrong_manifests():
    """(what, rendered documents with one mistake)."""
    node = render("overlays/node")
    daemonset = find(node, "DaemonSet")
    typo = copy.deepcopy(daemonset)
    typo["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = (
        typo["spec"]["template"]["spec"]["containers"][0]["volumeMounts"])
    wrong_type = copy.deepcopy(find(node, "Deployment"))
    wrong_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(find(render("overlays/sidecar"), "Pod"))
    del missing["spec"]["containers"][0]["image"]
    missing["spec"]["containers"][0]["name"] = None
    return [("unknown field volumeMount", [typo]),
            ("replicas is a string", [wrong_type]),
            ("container name null", [missing])]


@pytest.mark.parametrize("what,docs", wrong_manifests(),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_a_wrong_manifest_is_caught(what, docs, tmp_path):
    for version in [claimed_versions()[0], claimed_versions()[-1]]:
        rc, lines = validate(docs, version, tmp_path)
        assert rc != 0, (what, version, lines)
        assert any("did not validate" in line for line in lines), lines


def metrics_port_of_config(config_map):
    text = config_map["data"]["warmstartd.textproto"]
    return int(re.search(r'metrics_address: "[^"]*:(\d+)"', text).group(1))


def socket_path_of_config(config_map):
    text = config_map["data"]["warmstartd.textproto"]
    return re.search(r'unix_socket: "([^"]+)"', text).group(1)


def pod_specs(docs):
    """(labels, pod spec) of every pod the documents make."""
    for doc in docs:
        if doc["kind"] == "Pod":
            yield doc["metadata"].get("labels", {}), doc["spec"]
        elif doc["kind"] in ("DaemonSet", "Deployment"):
            template = doc["spec"]["template"]
            yield template["metadata"]["labels"], template["spec"]


def daemon_container(spec):
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "warmstartd")


@pytest.mark.parametrize("name", ["overlays/sidecar", "overlays/node"])
def test_metrics_scrape_reaches_the_daemon(name):
    docs = render(name)
    port = metrics_port_of_config(find(docs, "ConfigMap"))
    monitor = find(docs, "PodMonitor")
    policy = find(docs, "NetworkPolicy")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == selector
    scraped = [(labels, spec) for labels, spec in pod_specs(docs)
               if selector.items() <= labels.items()]
    assert len(scraped) == 1
    container = daemon_container(scraped[0][1])
    endpoint_port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert {"name": endpoint_port, "containerPort": port,
            "protocol": "TCP"} in container["ports"]
    allowed = [p["port"] for rule in policy["spec"]["ingress"]
               if "from" in rule for p in rule["ports"]]
    assert allowed == [port]
    # Only Prometheus, in namespace monitoring, is let in to that port.
    rule = next(r for r in policy["spec"]["ingress"] if "from" in r)
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}


@pytest.mark.parametrize("name", ["overlays/sidecar", "overlays/node"])
def test_daemon_uses_the_localhost_seccomp_profile(name):
    docs = render(name)
    _, spec = next((l, s) for l, s in pod_specs(docs)
                   if any(c["name"] == "warmstartd"
                          for c in s.get("initContainers", []) + s["containers"]))
    context = daemon_container(spec)["securityContext"]
    assert context["seccompProfile"] == {
        "type": "Localhost", "localhostProfile": "profiles/warmstartd.json"}
    assert os.path.basename(PROFILE) == "warmstartd.json"
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True


def test_seccompprofile_says_what_the_json_profile_says():
    with open(PROFILE) as f:
        profile = json.load(f)
    spo = find(render("base"), "SeccompProfile")["spec"]
    # SPO has no defaultErrnoRet: its default errno is EPERM, the JSON's.
    assert profile.get("defaultErrnoRet", 1) == 1
    expected = {k: v for k, v in profile.items() if k != "defaultErrnoRet"}
    assert spo == expected


def test_sidecar_has_startup_and_liveness_probes():
    pod = find(render("overlays/sidecar"), "Pod")
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["exec"]["command"][:2] == [
        "warmstartctl", "wait-ready"]
    assert sidecar["livenessProbe"]["exec"]["command"][:2] == [
        "warmstartctl", "info"]
    socket = socket_path_of_config(find(render("overlays/sidecar"),
                                        "ConfigMap"))
    assert socket in sidecar["livenessProbe"]["exec"]["command"]


def test_node_workers_reach_the_daemons_socket():
    docs = render("overlays/node")
    socket_dir = os.path.dirname(socket_path_of_config(find(docs,
                                                            "ConfigMap")))
    daemonset = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    workers = find(docs, "Deployment")["spec"]["template"]["spec"]

    def host_path(spec, mount_path):
        container = spec["containers"][0]
        mount = next(m for m in container["volumeMounts"]
                     if m["mountPath"] == mount_path)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        return volume["hostPath"]["path"], mount.get("readOnly", False)

    daemon_dir, _ = host_path(daemonset, socket_dir)
    worker_dir, read_only = host_path(workers, socket_dir)
    assert daemon_dir == worker_dir
    assert read_only
    group = daemon_container(daemonset)["securityContext"]["runAsGroup"]
    assert group in workers["securityContext"]["supplementalGroups"]
    assert "0660" in find(docs, "ConfigMap")["data"]["warmstartd.textproto"]
    # The init container hands the host directory to the daemon's user.
    init = daemonset["initContainers"][0]
    assert f"10001:{group}" in " ".join(init["command"])
    # The daemon takes no GPU from the device plugin; workers do.
    limits = daemon_container(daemonset)["resources"]["limits"]
    assert "nvidia.com/gpu" not in limits
    assert workers["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == 1


def test_renderer_refuses_what_it_does_not_know(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize_render.RenderError, match="namePrefix"):
        kustomize_render.render(str(tmp_path))
