"""A small renderer for the part of kustomize that deploy/kubernetes uses,
so the tests can render the overlays on a machine without kustomize
(Debian and PyPI ship no kustomize binary; `kubectl kustomize` comes with
kubectl, which these machines may lack). kubernetes_test.py checks that it
renders exactly what `kubectl kustomize` renders wherever kubectl exists.

Supported, and nothing else (anything else is an error, so a kustomization
that grows a feature this does not know fails loudly):
  resources:  files (YAML, several documents each) and directories holding
              a kustomization.yaml, in order;
  patches:    entries with `path:` to a strategic-merge patch, matched to
              one resource by apiVersion group, kind and name; maps merge
              recursively, a null deletes, lists of containers,
              initContainers, volumes, volumeMounts, env and ports merge by
              their key, any other list is replaced;
  labels:     entries with `pairs:` (includeSelectors and includeTemplates
              false): added to every resource's metadata.labels.

Usage: kustomize_render.py DIR   prints the rendered documents.
"""
import os
import sys

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "resources", "patches", "labels"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "ports": "containerPort",
}


class RenderError(Exception):
    pass


def _load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def _group(api_version):
    return api_version.split("/")[0] if "/" in api_version else ""


def _id(doc):
    return (_group(doc["apiVersion"]), doc["kind"], doc["metadata"]["name"])


def strategic_merge(target, patch, key=None):
    """`patch` merged into `target` (a new object; neither is changed)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        out = dict(target)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = strategic_merge(out[k], v, k)
            else:
                out[k] = v
        return out
    if (isinstance(target, list) and isinstance(patch, list)
            and key in MERGE_KEYS
            and all(isinstance(x, dict) for x in target + patch)):
        merge_key = MERGE_KEYS[key]
        out = list(target)
        for item in patch:
            for i, existing in enumerate(out):
                if existing.get(merge_key) == item.get(merge_key):
                    out[i] = strategic_merge(existing, item)
                    break
            else:
                out.append(item)
        return out
    return patch


def render(directory):
    """The resources of the kustomization in `directory`, rendered."""
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        raise RenderError(f"{directory}: no kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f)
    unknown = set(kustomization) - KNOWN_KEYS
    if unknown:
        raise RenderError(f"{path}: unsupported fields {sorted(unknown)}")

    docs = []
    for resource in kustomization.get("resources", []):
        resource_path = os.path.normpath(os.path.join(directory, resource))
        if os.path.isdir(resource_path):
            docs += render(resource_path)
        else:
            docs += _load(resource_path)
    ids = [_id(doc) for doc in docs]
    if len(set(ids)) != len(ids):
        raise RenderError(f"{path}: a resource is listed twice")

    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise RenderError(f"{path}: only `patches: - path:` is supported")
        for patch in _load(os.path.join(directory, entry["path"])):
            matches = [i for i, doc in enumerate(docs)
                       if _id(doc) == _id(patch)]
            if len(matches) != 1:
                raise RenderError(
                    f"{entry['path']}: patch matches {len(matches)} resources")
            docs[matches[0]] = strategic_merge(docs[matches[0]], patch)

    for entry in kustomization.get("labels", []):
        if set(entry) - {"pairs", "includeSelectors", "includeTemplates"} or (
                entry.get("includeSelectors") or entry.get("includeTemplates")):
            raise RenderError(f"{path}: only plain `labels: - pairs:`")
        for i, doc in enumerate(docs):
            labels = dict(doc["metadata"].get("labels") or {})
            labels.update(entry["pairs"])
            metadata = dict(doc["metadata"], labels=labels)
            docs[i] = dict(doc, metadata=metadata)
    return docs


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
