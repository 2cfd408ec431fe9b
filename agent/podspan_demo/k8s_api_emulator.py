"""Kubernetes API emulator for tests and the cluster demo: a real HTTP API server on loopback.

Built on kmock's KubernetesEmulator (kmock 0.8): kmock supplies the HTTP
server, API discovery (/api, /apis, /apis/G/V), resource declarations and the
object store (``emulator.objects``); this subclass replaces kmock's lenient
object semantics with the API-server behaviour that operators and agents rely
on, for every request that names a resource:

* metadata.uid, creationTimestamp, resourceVersion (one global counter),
  generation (1 on create, +1 when anything outside metadata/status changes,
  or outside metadata only for resources without a status subresource, and
  when deletionTimestamp is set); generateName; namespace must exist (404).
* status subresource: status is dropped on create (pods get phase Pending,
  namespaces phase Active; nodes keep it, as in Kubernetes), ignored in main
  PATCH/PUT, and /status PATCH/PUT changes nothing but status.
* PATCH: application/merge-patch+json (RFC 7386), application/json-patch+json
  (RFC 6902; a failing "test" op -> 422, as kopf expects),
  application/strategic-merge-patch+json (built-in types only, else 415;
  merge keys for common lists, $patch/$retainKeys/$deleteFromPrimitiveList
  directives), application/apply-patch+yaml (server-side apply, approximated:
  see below). metadata.resourceVersion in a patch is a precondition (409).
* PUT (replace) with optimistic concurrency: stale resourceVersion -> 409;
  missing resourceVersion on custom resources -> 422 (unconditional update is
  not allowed for CRs); create-on-update only for leases and events.
* No-op writes do not bump resourceVersion and emit no watch event.
* DELETE: finalizers -> deletionTimestamp (+ MODIFIED), the object goes when
  the last finalizer is removed; preconditions (uid/resourceVersion) -> 409;
  new finalizers cannot be added once deletionTimestamp is set (422);
  ownerReferences garbage collection when an owner is deleted (background,
  synchronous here; orphan policy honoured; dangling references removed from
  dependents that keep another owner; cluster-scoped dependents of
  namespaced owners are left, as the real GC does); namespace deletion
  deletes its objects.
* list/watch: namespace scoping, labelSelector (=, ==, !=, in, notin,
  exists, !exists), fieldSelector (metadata.name, metadata.namespace and the
  per-resource fields Kubernetes supports, e.g. spec.nodeName and
  status.phase for pods; unsupported fields -> 400, as in Kubernetes).
  Watch honours resourceVersion (replays retained events after it; 410 Gone
  "Expired" when it is older than the retained window), sends synthetic
  ADDED events when started without one (or with "0"), timeoutSeconds,
  allowWatchBookmarks (periodic BOOKMARK events), sendInitialEvents (BOOKMARK
  with k8s.io/initial-events-end), and the watch-cache selector semantics: an
  object that stops matching a selector is sent as DELETED, one that starts
  matching as ADDED.
* kubectl's Table requests (Accept: ...;as=Table) get a Table with NAME and
  a stored CRD's additionalPrinterColumns (NAME and AGE without any); `date`
  cells come as ages ("5m"), as the real table convertor sends them.
* Creating a CustomResourceDefinition declares its served versions; the
  podspan.dev and kopf.dev CRD objects exist from the start (as in a cluster
  where they are installed), and so do namespaces default, kube-system,
  kube-public and kube-node-lease.
* kmock 0.8 mis-parses /api/v1/namespaces and writes groupVersion "/v1" in
  core discovery (kubectl then sees no core resources); both are fixed here.

Not provided (documented here because kmock or the scope does not allow it):
* Authentication/authorization/admission webhooks, OpenAPI schema validation
  and defaulting (objects are stored as given), /openapi endpoints.
* Server-side apply field ownership is approximated per field manager: keys
  the same manager applied before and omits now are removed, everything else
  is a JSON merge; there are no managedFields and no conflicts between
  managers; list-type/map-type markers are ignored (lists replace).
* Strategic merge patch knows merge keys for common fields only
  (containers/env/volumes/ports/conditions/ownerReferences/...).
* List pagination (limit/continue) is ignored: lists are returned whole.
* Pods are deleted at once (no kubelet grace period), namespaces skip the
  Terminating phase; foreground deletion is treated as background; the GC
  never scans on its own (a dependent whose owner never existed, or sits in
  another namespace, stays until its owner's uid is deleted).
* kubectl apply/create need --validate=false (no OpenAPI documents).
* No watch-cache delays: events arrive immediately and in order.
* Subresources other than status (scale, log, exec, eviction, binding).

Fault injection (for reliability tests): ``APIServer.inject(Fault(method, path, action, count))``
makes the next `count` requests whose method and path+query match answer with a chosen failure
before (or instead of) normal handling: ``Respond(code, retry_after)`` (a Status with that code,
e.g. 429 with Retry-After or 500), ``Delay(seconds)`` (then served normally), ``CutWatch(after)``
(a watch whose connection drops after `after` object events) or ``ExpireWatch()`` (a watch answered
with 410 Gone "Expired" in the stream, as for a resourceVersion older than the retained window).
Rules are consulted in order: a request is held by every live Delay rule that matches, then takes
the first other live rule that matches (so a slow answer can also fail). ``drop_watches(path)``
drops the connections of watches already being served. ``request_counts``
counts every request by (User-Agent product, verb, resource plural).

Use in-process (a background thread)::

    with EmulatorThread() as api:          # api.url, api.kubeconfig
        kc = KubeClient(api.url)
        kc.create("v1/namespaces", {"metadata": {"name": "shop"}})

or as a program::

    python k8s_api_emulator.py --port 0 --kubeconfig KUBECONFIG_PATH
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import copy
import dataclasses
import datetime
import json
import os
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import requests
import yaml
from kmock._internal import parsing as kmock_parsing

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

# (resource key, kind, namespaced, subresources, short names)
RESOURCES: list[tuple[str, str, bool, set[str], set[str]]] = [
    ("v1/namespaces", "Namespace", False, {"status"}, {"ns"}),
    ("v1/nodes", "Node", False, {"status"}, {"no"}),
    ("v1/pods", "Pod", True, {"status"}, {"po"}),
    ("v1/events", "Event", True, set(), {"ev"}),
    ("v1/configmaps", "ConfigMap", True, set(), {"cm"}),
    ("v1/secrets", "Secret", True, set(), set()),
    ("v1/services", "Service", True, {"status"}, {"svc"}),
    ("v1/endpoints", "Endpoints", True, set(), {"ep"}),
    ("v1/serviceaccounts", "ServiceAccount", True, set(), {"sa"}),
    ("apps/v1/deployments", "Deployment", True, {"status"}, {"deploy"}),
    ("apps/v1/replicasets", "ReplicaSet", True, {"status"}, {"rs"}),
    ("apps/v1/daemonsets", "DaemonSet", True, {"status"}, {"ds"}),
    ("apps/v1/statefulsets", "StatefulSet", True, {"status"}, {"sts"}),
    ("batch/v1/jobs", "Job", True, {"status"}, set()),
    ("batch/v1/cronjobs", "CronJob", True, {"status"}, {"cj"}),
    ("coordination.k8s.io/v1/leases", "Lease", True, set(), set()),
    ("events.k8s.io/v1/events", "Event", True, set(), {"ev"}),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, set(), set()),
    ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False,
     {"status"}, {"crd", "crds"}),
    ("podspan.dev/v1alpha1/traceprofiles", "TraceProfile", True, {"status"}, {"tp"}),
    ("podspan.dev/v1alpha1/clustertraceprofiles", "ClusterTraceProfile", False, {"status"}, {"ctp"}),
    ("podspan.dev/v1alpha1/nodetraceconfigs", "NodeTraceConfig", False, {"status"}, {"ntc"}),
    ("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", False, set(), set()),
    ("kopf.dev/v1/kopfpeerings", "KopfPeering", True, set(), set()),
]
INITIAL_NAMESPACES = ["default", "kube-system", "kube-public", "kube-node-lease"]
BUILTIN_GROUPS = {"", "apps", "batch", "coordination.k8s.io", "events.k8s.io", "discovery.k8s.io",
                  "apiextensions.k8s.io", "rbac.authorization.k8s.io", "networking.k8s.io", "policy"}
CREATE_ON_UPDATE = {("coordination.k8s.io", "leases"), ("", "events"), ("events.k8s.io", "events")}

# Field selectors Kubernetes accepts per resource, besides metadata.name/namespace.
FIELD_SELECTORS: dict[tuple[str, str], set[str]] = {
    ("", "pods"): {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                   "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
    ("", "nodes"): {"spec.unschedulable"},
    ("", "namespaces"): {"status.phase"},
    ("", "secrets"): {"type"},
    ("", "events"): {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                     "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                     "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
    ("events.k8s.io", "events"): {"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid",
                                  "reason", "reportingController", "type"},
    ("apps", "replicasets"): {"status.replicas"},
    ("batch", "jobs"): {"status.successful"},
}

# Strategic merge patch: merge keys of common list fields; primitive lists merged as sets.
SMP_MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
                  "env": "name", "volumes": "name", "volumeMounts": "mountPath", "ports": "containerPort",
                  "conditions": "type", "ownerReferences": "uid", "addresses": "type", "podIPs": "ip",
                  "imagePullSecrets": "name", "hostAliases": "ip", "taints": "key"}
SMP_PRIMITIVE_SETS = {"finalizers"}

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
WATCH_LOG_SIZE = 10000

# kmock 0.8 parses /api/v1/namespaces[/NAME[/status]] as a namespace prefix with
# no resource (and fails on the bare collection). Route those paths to the
# namespaces resource itself before kmock's generic parser sees them.
_kmock_parse_path = kmock_parsing.parse_path


def _parse_path(path: str) -> kmock_parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if (len(parts) in (3, 4, 5) and parts[0] == "api" and parts[2] == "namespaces"
            and (len(parts) < 5 or parts[4] in ("status", "finalize"))):
        return kmock_parsing.ParsedPath(group="", version=parts[1], plural="namespaces", namespace=None,
                                        name=parts[3] if len(parts) > 3 else None,
                                        subresource=parts[4] if len(parts) > 4 else None)
    return _kmock_parse_path(path)


kmock_parsing.parse_path = _parse_path


class APIError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "details": self.details, "code": self.code}


def _age(timestamp: str) -> str:
    """Kubernetes' HumanDuration of the time since an RFC 3339 timestamp ("45s", "3m20s", "5h", "12d")."""
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    secs = max(0, int(time.time() - then.timestamp()))
    minutes, hours, days = secs // 60, secs // 3600, secs // 86400
    if secs < 120:
        return f"{secs}s"
    if minutes < 10:
        return f"{minutes}m{secs % 60}s" if secs % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 192:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d" if days < 730 else f"{days // 365}y"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(res: kmock.resource) -> str:
    return res.version if res.group == "" else f"{res.group}/{res.version}"


# ---------------------------------------------------------------------------
# selectors
# ---------------------------------------------------------------------------
def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(s: str | None) -> Callable[[dict[str, str]], bool]:
    if not s:
        return lambda labels: True
    reqs: list[Callable[[dict[str, str]], bool]] = []
    for part in _split_top(s):
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\(([^()]*)\)", part)
        if m:
            key, op = m.group(1), m.group(2)
            vals = {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                reqs.append(lambda l, k=key, vs=vals: k in l and l[k] in vs)
            else:
                reqs.append(lambda l, k=key, vs=vals: k not in l or l[k] not in vs)
        elif "!=" in part:
            key, val = (x.strip() for x in part.split("!=", 1))
            reqs.append(lambda l, k=key, v=val: l.get(k) != v)
        elif "=" in part:
            key, val = (x.strip() for x in re.split(r"==?", part, maxsplit=1))
            reqs.append(lambda l, k=key, v=val: k in l and l[k] == v)
        elif part.startswith("!"):
            key = part[1:].strip()
            reqs.append(lambda l, k=key: k not in l)
        else:
            key = part
            reqs.append(lambda l, k=key: k in l)
        if not LABEL_KEY_RE.match(key):
            raise APIError(400, "BadRequest", f"unable to parse requirement: invalid label key {key!r}")
    return lambda labels: all(r(labels) for r in reqs)


def _field_value(obj: dict[str, Any], path: str) -> str:
    if path == "source":
        path = "source.component"
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(s: str | None, res: kmock.resource) -> Callable[[dict[str, Any]], bool]:
    if not s:
        return lambda obj: True
    allowed = {"metadata.name", "metadata.namespace"} | FIELD_SELECTORS.get((res.group, res.plural), set())
    reqs = []
    for part in _split_top(s):
        m = re.fullmatch(r"([^=!]+?)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise APIError(400, "BadRequest", f"invalid selector: {s!r}; can't understand {part!r}")
        field, op, val = m.group(1).strip(), m.group(2), m.group(3).strip()
        if field not in allowed:
            raise APIError(400, "BadRequest", f"field label not supported: {field}")
        if op == "!=":
            reqs.append(lambda o, f=field, v=val: _field_value(o, f) != v)
        else:
            reqs.append(lambda o, f=field, v=val: _field_value(o, f) == v)
    return lambda obj: all(r(obj) for r in reqs)


# ---------------------------------------------------------------------------
# patches
# ---------------------------------------------------------------------------
_JSONPATH_STEP = re.compile(r'\.([A-Za-z0-9_-]+)|\[\?\(@\.([A-Za-z0-9_-]+)=="([^"]*)"\)\]|\[(\d+)\]')


def jsonpath_values(obj: Any, path: str) -> list[Any]:
    """What a printer column's JSONPath selects, for the subset CRDs use: `.field`, `[N]` and
    `[?(@.field=="value")]`; missing fields select nothing (the cell stays empty, as in kubectl)."""
    values, pos = [obj], 0
    while pos < len(path):
        step = _JSONPATH_STEP.match(path, pos)
        if step is None:
            return []  # an expression this emulator does not evaluate: an empty cell
        pos = step.end()
        field, filter_field, filter_value, index = step.groups()
        selected: list[Any] = []
        for value in values:
            if field is not None and isinstance(value, dict) and field in value:
                selected.append(value[field])
            elif filter_field is not None and isinstance(value, list):
                selected += [item for item in value
                             if isinstance(item, dict) and str(item.get(filter_field)) == filter_value]
            elif index is not None and isinstance(value, list) and int(index) < len(value):
                selected.append(value[int(index)])
        values = selected
    return values


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, val in patch.items():
        if val is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), val)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not (isinstance(v, dict) and set(v) == {"$patch"})]
    return value


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return _strip_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "replace":
        return _strip_directives(copy.deepcopy(patch))
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, val in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [x for x in result.get(field, []) if x not in val]
            continue
        if val is None:
            result.pop(key, None)
        elif isinstance(val, list) and isinstance(result.get(key), list) and (
                key in SMP_MERGE_KEYS or key in SMP_PRIMITIVE_SETS):
            if any(isinstance(x, dict) and x.get("$patch") == "replace" and len(x) == 1 for x in val):
                result[key] = _strip_directives(val)
            elif key in SMP_PRIMITIVE_SETS:
                result[key] = result[key] + [x for x in val if x not in result[key]]
            else:
                result[key] = _merge_keyed_list(result[key], val, SMP_MERGE_KEYS[key])
        elif isinstance(val, dict):
            sub = strategic_merge(result.get(key), val)
            if sub is None:
                result.pop(key, None)
            else:
                result[key] = sub
        else:
            result[key] = _strip_directives(copy.deepcopy(val))
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_keyed_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    out = copy.deepcopy(current)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            out.append(_strip_directives(copy.deepcopy(item)))
            continue
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(merge_key) == item[merge_key]),
                   None)
        if item.get("$patch") == "delete":
            if idx is not None:
                del out[idx]
        elif idx is None:
            out.append(_strip_directives(copy.deepcopy(item)))
        else:
            out[idx] = strategic_merge(out[idx], item)
    return out


def _remove_dropped(base: Any, previous: Any, current: Any) -> Any:
    """SSA approximation: drop keys this manager applied before but not now."""
    if not (isinstance(base, dict) and isinstance(previous, dict)):
        return base
    current = current if isinstance(current, dict) else {}
    for key, prev_val in previous.items():
        if key not in current:
            base.pop(key, None)
        elif isinstance(prev_val, dict):
            base[key] = _remove_dropped(base.get(key), prev_val, current[key])
    return base


def _spec_part(obj: dict[str, Any], has_status: bool) -> dict[str, Any]:
    skip = {"metadata", "status"} if has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


# ---------------------------------------------------------------------------
# fault injection
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Respond:
    """Answer with a Kubernetes Status of this code instead of handling the request."""

    code: int
    retry_after: int | None = None  # seconds, sent as Retry-After and details.retryAfterSeconds


@dataclasses.dataclass(frozen=True)
class Delay:
    """Hold the request this long, then handle it (normally, or by the next matching rule): a slow API server."""

    seconds: float


@dataclasses.dataclass(frozen=True)
class CutWatch:
    """Drop a watch's connection, without ending the response, after this many object events."""

    after: int


@dataclasses.dataclass(frozen=True)
class ExpireWatch:
    """Answer a watch with 410 Gone in the stream: the client must list again."""


FaultAction = Respond | Delay | CutWatch | ExpireWatch
WATCH_ACTIONS = (CutWatch, ExpireWatch)


@dataclasses.dataclass
class Fault:
    """Apply `action` to the next `count` requests (None: every one) whose HTTP method (or "*") and
    path with query string (re.search) match; watch-only actions match watch requests only."""

    method: str
    path: str
    action: FaultAction
    count: int | None = 1
    hits: int = 0

    @property
    def live(self) -> bool:
        return self.count is None or self.hits < self.count

    def matches(self, method: str, path_qs: str, watch: bool) -> bool:
        return (self.live and self.method.upper() in ("*", method) and re.search(self.path, path_qs) is not None
                and (watch or not isinstance(self.action, WATCH_ACTIONS)))


class _WatchCut(Exception):
    """Raised inside a watch to drop its connection (CutWatch)."""


def _verb(method: str, request: kmock.Request) -> str:
    if method == "GET":
        return "watch" if request.params.get("watch") in ("true", "1") else (
            "get" if request.name is not None else "list")
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


# ---------------------------------------------------------------------------
# the emulator
# ---------------------------------------------------------------------------
@attrs.define(kw_only=True)
class APIServer(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with API-server semantics (see module doc)."""

    bookmark_interval: float = 30.0
    _rv: int = attrs.field(default=0, init=False)
    _log: dict[Any, collections.deque] = attrs.field(factory=dict, init=False)
    _log_floor: dict[Any, int] = attrs.field(factory=dict, init=False)
    _applied: dict[Any, Any] = attrs.field(factory=dict, init=False)
    _printer_columns: dict[Any, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    # Mutating requests per (User-Agent product, resource plural): lets benchmarks count a client's writes.
    writes: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter, init=False)
    # Every request naming a resource, per (User-Agent product, verb, resource plural).
    request_counts: collections.Counter[tuple[str, str, str]] = attrs.field(factory=collections.Counter, init=False)
    # Injected faults (see the module doc); tests add them from their own thread, hence the lock.
    _faults: list[Fault] = attrs.field(factory=list, init=False)
    _faults_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    # Watches being served: path with query -> their connections, for drop_watches(); read from any thread.
    _open_watches: dict[int, tuple[str, asyncio.BaseTransport]] = attrs.field(factory=dict, init=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, kind, namespaced, subresources, shortnames in RESOURCES:
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, singular=kind.lower(), namespaced=namespaced, verbs=set(VERBS),
                subresources=subresources, shortnames=shortnames)
        ns_res = kmock.resource("v1/namespaces")
        for name in INITIAL_NAMESPACES:
            self._rv += 1
            self._objects[ns_res, None, name] = self._namespace_object(name)
        # As in a cluster where the CRDs are installed: one CRD object per custom resource.
        crd_res = kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions")
        for key, kind, namespaced, subresources, shortnames in RESOURCES:
            res = kmock.resource(key)
            if res.group in BUILTIN_GROUPS:
                continue
            self._rv += 1
            crd = self._crd_object(res, kind, namespaced, subresources, shortnames)
            self._objects[crd_res, None, crd["metadata"]["name"]] = crd

    def _crd_object(self, res: kmock.resource, kind: str, namespaced: bool, subresources: set[str],
                    shortnames: set[str]) -> dict[str, Any]:
        names = {"plural": res.plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"}
        if shortnames:
            names["shortNames"] = sorted(shortnames)
        version = {"name": res.version, "served": True, "storage": True,
                   "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
        if "status" in subresources:
            version["subresources"] = {"status": {}}
        body = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{res.plural}.{res.group}", "uid": str(uuid.uuid4()),
                             "creationTimestamp": _now(), "resourceVersion": str(self._rv), "generation": 1},
                "spec": {"group": res.group, "names": names, "scope": "Namespaced" if namespaced else "Cluster",
                         "versions": [version]}}
        self._create_defaults(kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"),
                              self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"], body)
        return body

    def _namespace_object(self, name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
                             "resourceVersion": str(self._rv), "generation": 1,
                             "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

    # -- discovery ----------------------------------------------------------------
    async def _serve_version(self, request: kmock.Request) -> dict[str, Any]:
        """APIResourceList; kmock 0.8 writes groupVersion "/v1" for the core group
        (kubectl then finds no core resources) and copies short names and verbs
        onto subresources."""
        group, version = request.resource.group, request.resource.version
        entries = []
        for res in sorted(self._get_resources(), key=lambda r: r.plural or ""):
            if res.group != group or res.version != version or not res.plural or res not in self.resources:
                continue
            info = self.resources[res]
            entries.append({"name": res.plural, "singularName": info.singular or "", "namespaced": bool(info.namespaced),
                            "kind": info.kind, "verbs": sorted(info.verbs), "shortNames": sorted(info.shortnames),
                            "categories": sorted(info.categories)})
            for sub in sorted(info.subresources):
                entries.append({"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": bool(info.namespaced),
                                "kind": info.kind, "verbs": ["get", "patch", "update"]})
        if not entries and group != "":
            raise kmock.KubernetesResourceNotFoundError()
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": version if group == "" else f"{group}/{version}", "resources": entries}

    # -- plumbing ---------------------------------------------------------------
    def _info(self, res: kmock.resource) -> kmock.ResourceInfo:
        if res not in self.resources:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return self.resources[res]

    def _live(self, key: tuple[Any, str | None, str]) -> dict[str, Any] | None:
        if key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else copy.deepcopy(obj.last.raw)

    def _live_items(self, res: kmock.resource | None = None) -> Iterable[tuple[tuple[Any, str | None, str], dict[str, Any]]]:
        for key, obj in list(self._objects.items()):
            if (res is None or key[0] == res) and not obj.deleted:
                yield key, obj.last.raw

    def _store(self, key: tuple[Any, str | None, str], body: dict[str, Any]) -> None:
        if key in self._objects:
            history = self._objects[key].history
            history.append(copy.deepcopy(body))
            if len(history) > 20:
                del history[:len(history) - 20]
        else:
            self._objects[key] = copy.deepcopy(body)

    async def _emit(self, res: kmock.resource, etype: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        log = self._log.setdefault(res, collections.deque(maxlen=WATCH_LOG_SIZE))
        if len(log) == log.maxlen:
            self._log_floor[res] = log[0]["rv"]
        event = {"type": etype, "object": copy.deepcopy(obj), "old": copy.deepcopy(old), "rv": self._rv}
        log.append(event)
        await self._buses[res].put(event)

    async def _write(self, res: kmock.resource, key: Any, body: dict[str, Any], etype: str,
                     old: dict[str, Any] | None) -> dict[str, Any]:
        self._rv += 1
        body["metadata"]["resourceVersion"] = str(self._rv)
        self._store(key, body)
        await self._emit(res, etype, body, old)
        return body

    async def _remove(self, res: kmock.resource, key: Any, last: dict[str, Any], orphan: bool = False) -> dict[str, Any]:
        self._rv += 1
        final = copy.deepcopy(last)
        final["metadata"]["resourceVersion"] = str(self._rv)
        self._objects[key].delete()
        for k in [k for k in self._applied if k[0] == key]:
            del self._applied[k]
        await self._emit(res, "DELETED", final, last)
        if res == kmock.resource("v1/namespaces"):
            for okey, obj in list(self._live_items()):
                if okey[1] == key[2] and okey[0] != res:
                    await self._delete_object(okey[0], okey, copy.deepcopy(obj))
        if not orphan:
            await self._collect_garbage(res, key, final)
        return final

    async def _delete_object(self, res: kmock.resource, key: Any, cur: dict[str, Any],
                             orphan: bool = False) -> dict[str, Any]:
        meta = cur["metadata"]
        if meta.get("finalizers"):
            if meta.get("deletionTimestamp"):
                return cur
            new = copy.deepcopy(cur)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = int(meta.get("generation", 1)) + 1
            return await self._write(res, key, new, "MODIFIED", cur)
        return await self._remove(res, key, cur, orphan=orphan)

    async def _collect_garbage(self, owner_res: kmock.resource, owner_key: Any, owner: dict[str, Any]) -> None:
        owner_uid = owner["metadata"].get("uid")
        owner_namespaced = owner_key[1] is not None
        live_uids = {o["metadata"].get("uid") for _, o in self._live_items()}
        for key, obj in list(self._live_items()):
            refs = obj.get("metadata", {}).get("ownerReferences") or []
            if not any(r.get("uid") == owner_uid for r in refs):
                continue
            if owner_namespaced and (key[1] is None or key[1] != owner_key[1]):
                continue  # cluster-scoped or cross-namespace dependent: invalid, GC leaves it
            remaining = [r for r in refs if r.get("uid") != owner_uid and r.get("uid") in live_uids]
            cur = copy.deepcopy(obj)
            if remaining:
                new = copy.deepcopy(cur)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                await self._write(key[0], key, new, "MODIFIED", cur)
            else:
                await self._delete_object(key[0], key, cur)

    # -- fault injection ----------------------------------------------------------
    def inject(self, *faults: Fault) -> None:
        """Add fault rules (after those already there); callable from any thread."""
        with self._faults_lock:
            self._faults.extend(faults)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def drop_watches(self, path: str) -> int:
        """Drop the connections of the watches being served whose path with query matches (re.search), as an
        API server restart or a load balancer would; returns how many. Callable from any thread."""
        with self._faults_lock:
            transports = [t for p, t in self._open_watches.values() if re.search(path, p)]
        if transports and self._loop is not None:
            for transport in transports:
                self._loop.call_soon_threadsafe(transport.close)
        return len(transports)

    def _take_faults(self, method: str, request: kmock.Request) -> tuple[float, FaultAction | None]:
        """Seconds to hold the request (every matching Delay adds up), and the first other matching action."""
        watch = method == "GET" and request.params.get("watch") in ("true", "1")
        delay = 0.0
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(method, request.url.path_qs, watch):
                    fault.hits += 1
                    if not isinstance(fault.action, Delay):
                        return delay, fault.action
                    delay += fault.action.seconds
        return delay, None

    # -- request dispatch ---------------------------------------------------------
    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        delay, fault = self._take_faults(method, request)
        if delay:
            await asyncio.sleep(delay)
        res = request.resource
        if res is not None and res.plural is not None:
            agent = (request.headers.get("User-Agent") or "").split("/", 1)[0]
            self.request_counts[agent, _verb(method, request), res.plural] += 1
            if method in ("POST", "PUT", "PATCH", "DELETE"):
                self.writes[agent, res.plural] += 1
        if isinstance(fault, Respond):
            return self._fault_response(fault)
        if res is None or res.plural is None:
            return await kmock.RawHandler._handle(self, request)  # discovery: kmock's own
        try:
            info = self._info(res)
            if request.namespace is not None and not info.namespaced:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            if request.subresource not in (None, "status") or (
                    request.subresource == "status" and "status" not in info.subresources):
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            if method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._watch(request, res, info, fault)
            if method == "GET" and request.name is None:
                return await self._list(request, res, info)
            if method == "GET":
                return self._json(await self._get(request, res, info))
            if method == "POST" and request.name is None:
                return self._json(await self._create(request, res, info), 201)
            if method == "PATCH" and request.name is not None:
                return self._json(await self._patch(request, res, info))
            if method == "PUT" and request.name is not None:
                return self._json(await self._replace(request, res, info))
            if method == "DELETE" and request.name is not None:
                return self._json(await self._delete(request, res, info))
            if method == "DELETE":
                return self._json(await self._delete_collection(request, res, info))
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        except APIError as e:
            return aiohttp.web.json_response(e.status(), status=e.code)

    @staticmethod
    def _fault_response(fault: Respond) -> aiohttp.web.Response:
        reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
                   410: "Gone", 409: "Conflict"}
        details: dict[str, Any] = {}
        headers = {}
        if fault.retry_after is not None:
            details["retryAfterSeconds"] = fault.retry_after
            headers["Retry-After"] = str(fault.retry_after)
        error = APIError(fault.code, reasons.get(fault.code, "Unknown"), f"injected fault: {fault.code}", details)
        return aiohttp.web.json_response(error.status(), status=fault.code, headers=headers)

    @staticmethod
    def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(body, status=status)

    def _key(self, request: kmock.Request, info: kmock.ResourceInfo, name: str | None = None) -> Any:
        if info.namespaced and request.namespace is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return (request.resource, request.namespace if info.namespaced else None, name or request.name)

    def _not_found(self, res: kmock.resource, name: str) -> APIError:
        return APIError(404, "NotFound", f'{res.plural}{"." + res.group if res.group else ""} "{name}" not found',
                        {"name": name, "group": res.group, "kind": res.plural})

    def _matcher(self, request: kmock.Request, res: kmock.resource) -> Callable[[dict[str, Any]], bool]:
        labels = parse_label_selector(request.params.get("labelSelector"))
        fields = parse_field_selector(request.params.get("fieldSelector"), res)
        ns, name = request.namespace, request.name

        def match(obj: dict[str, Any]) -> bool:
            meta = obj.get("metadata", {})
            return ((ns is None or meta.get("namespace") == ns) and (name is None or meta.get("name") == name)
                    and labels(meta.get("labels") or {}) and fields(obj))
        return match

    # -- reads --------------------------------------------------------------------
    async def _get(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        async with self._lock:
            cur = self._live(self._key(request, info))
        if cur is None:
            raise self._not_found(res, request.name)
        return cur

    async def _list(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> aiohttp.web.StreamResponse:
        match = self._matcher(request, res)
        async with self._lock:
            items = [copy.deepcopy(o) for _, o in self._live_items(res) if match(o)]
            rv = self._rv
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"].get("name")))
        if "as=Table" in request.headers.get("Accept", ""):
            return self._json(self._table(res, info, items, rv))
        return self._json({"apiVersion": _api_version(res), "kind": f"{info.kind}List",
                           "metadata": {"resourceVersion": str(rv)}, "items": items})

    def _table(self, res: kmock.resource, info: kmock.ResourceInfo, items: list[dict[str, Any]],
               rv: int) -> dict[str, Any]:
        # As apiextensions-apiserver: Name plus the CRD's printer columns, or Name and Age when it has none;
        # a `date` cell is sent as a human-readable age ("5m"), as the real server's table convertor does.
        extra = self._printer_columns.get(res) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}]
        columns += [{"name": c.get("name"), "type": c.get("type", "string"), "format": c.get("format", ""),
                     "description": c.get("description", ""), "priority": c.get("priority", 0)} for c in extra]
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for c in extra:
                found = jsonpath_values(obj, c.get("jsonPath", ""))
                cell = found[0] if len(found) == 1 else ",".join(map(str, found))
                if c.get("type") == "date" and isinstance(cell, str) and cell:
                    cell = _age(cell)
                cells.append(cell)
            rows.append({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                                                    "apiVersion": "meta.k8s.io/v1",
                                                    "metadata": obj["metadata"]}})
        return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(rv)},
                "columnDefinitions": columns, "rows": rows}

    async def _watch(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo,
                     fault: FaultAction | None = None) -> aiohttp.web.StreamResponse:
        match = self._matcher(request, res)
        params = request.params
        since = params.get("resourceVersion")
        timeout = float(params.get("timeoutSeconds") or 1800)
        bookmarks = params.get("allowWatchBookmarks") == "true"
        send_initial = params.get("sendInitialEvents") == "true"
        if since not in (None, "", "0"):
            try:
                since_rv = int(since)
            except ValueError:
                raise APIError(400, "BadRequest", f"invalid resource version: {since!r}")
        bus = self._buses[res]
        gone = False
        initial: list[dict[str, Any]] = []
        replay: list[dict[str, Any]] = []
        async with self._lock:
            marker = await bus.mark()
            start_rv = self._rv
            if since in (None, "", "0") or send_initial:
                initial = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for _, o in self._live_items(res) if match(o)]
            elif since_rv < self._log_floor.get(res, 0):
                gone = True
            else:
                replay = [e for e in self._log.get(res, ()) if e["rv"] > since_rv]
                start_rv = max(start_rv, since_rv)
        gone = gone or isinstance(fault, ExpireWatch)
        cut_after = fault.after if isinstance(fault, CutWatch) else None
        sent, cut = 0, False

        raw = request._raw_request
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        self._loop = asyncio.get_running_loop()
        if raw.transport is not None:
            with self._faults_lock:
                self._open_watches[id(response)] = (request.url.path_qs, raw.transport)

        async def send(event: dict[str, Any]) -> None:
            nonlocal sent
            await response.write(json.dumps(event).encode() + b"\n")
            if event["type"] not in ("BOOKMARK", "ERROR"):
                sent += 1
            if cut_after is not None and sent >= cut_after:
                raise _WatchCut()

        def bookmark(rv: int, initial_end: bool = False) -> dict[str, Any]:
            meta: dict[str, Any] = {"resourceVersion": str(rv)}
            if initial_end:
                meta["annotations"] = {"k8s.io/initial-events-end": "true"}
            return {"type": "BOOKMARK", "object": {"kind": info.kind, "apiVersion": _api_version(res),
                                                   "metadata": meta}}

        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            async for ev in bus.stream(since=marker):
                await queue.put(ev)

        pump_task = asyncio.create_task(pump())
        deadline = time.monotonic() + timeout
        try:
            if cut_after == 0:
                raise _WatchCut()
            if gone:
                await send({"type": "ERROR", "object": APIError(
                    410, "Expired", f"too old resource version: {since} ({self._log_floor.get(res, 0)})").status()})
                return response
            for ev in initial:
                await send(ev)
            if send_initial:
                await send(bookmark(start_rv, initial_end=True))
            last_rv = start_rv
            for ev in replay:
                out = self._translate(ev, match)
                if out:
                    await send(out)
                last_rv = max(last_rv, ev["rv"])
            last_bookmark = time.monotonic()
            while True:
                now = time.monotonic()
                if now >= deadline:
                    break
                if raw.transport is None or raw.transport.is_closing():
                    break
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=min(1.0, deadline - now))
                except TimeoutError:
                    if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_interval:
                        await send(bookmark(self._rv))
                        last_bookmark = time.monotonic()
                    continue
                if ev["rv"] <= last_rv:
                    continue
                last_rv = ev["rv"]
                out = self._translate(ev, match)
                if out:
                    await send(out)
        except _WatchCut:
            cut = True
        except (ConnectionError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            with self._faults_lock:
                self._open_watches.pop(id(response), None)
            pump_task.cancel()
            try:
                await pump_task
            except (asyncio.CancelledError, Exception):
                pass
            try:
                await bus.unmark(marker)
            except Exception:
                pass
        if cut:
            # Dropped mid-response (no terminating chunk): the client sees a broken stream, not an end.
            if raw.transport is not None:
                raw.transport.close()
            return response
        try:
            await response.write_eof()
        except Exception:
            pass
        return response

    @staticmethod
    def _translate(ev: dict[str, Any], match: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        etype, obj, old = ev["type"], ev["object"], ev["old"]
        if etype == "ADDED":
            return {"type": "ADDED", "object": obj} if match(obj) else None
        if etype == "DELETED":
            return {"type": "DELETED", "object": obj} if match(old or obj) else None
        new_ok, old_ok = match(obj), old is not None and match(old)
        if new_ok:
            return {"type": "MODIFIED" if old_ok else "ADDED", "object": obj}
        if old_ok:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"]
            return {"type": "DELETED", "object": gone}
        return None

    # -- writes -------------------------------------------------------------------
    def _body(self, request: kmock.Request, expect: type = dict) -> Any:
        data = request.data
        if data is None and request.text:
            try:
                data = yaml.safe_load(request.text)
            except yaml.YAMLError as e:
                raise APIError(400, "BadRequest", f"unable to decode body: {e}")
        if not isinstance(data, expect):
            raise APIError(400, "BadRequest", f"the body must be a JSON {expect.__name__}")
        return copy.deepcopy(data)

    def _check_type(self, body: dict[str, Any], res: kmock.resource, info: kmock.ResourceInfo) -> None:
        av, kind = body.get("apiVersion"), body.get("kind")
        if av is not None and av != _api_version(res):
            raise APIError(400, "BadRequest", f"the API version in the data ({av}) does not match the expected "
                                              f"API version ({_api_version(res)})")
        if kind is not None and kind != info.kind:
            raise APIError(400, "BadRequest", f"the kind in the data ({kind}) does not match the expected kind "
                                              f"({info.kind})")
        body["apiVersion"], body["kind"] = _api_version(res), info.kind

    async def _create(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo,
                      body: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
        if request.subresource is not None:
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        body = self._body(request) if body is None else body
        self._check_type(body, res, info)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise APIError(400, "BadRequest", "metadata must be an object")
        ns = request.namespace if info.namespaced else None
        if info.namespaced:
            if ns is None:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            if meta.get("namespace") not in (None, ns):
                raise APIError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
        async with self._lock:
            name = name or meta.get("name")
            if not name and meta.get("generateName"):
                alphabet = "bcdfghjklmnpqrstvwxz2456789"
                name = meta["generateName"] + "".join(random.choice(alphabet) for _ in range(5))
            if not name:
                raise APIError(422, "Invalid", f"{info.kind} is invalid: metadata.name: Required value: "
                                               "name or generateName is required")
            if not NAME_RE.match(name):
                raise APIError(422, "Invalid", f'{info.kind} "{name}" is invalid: metadata.name: Invalid value')
            key = (res, ns, name)
            if self._live(key) is not None:
                raise APIError(409, "AlreadyExists",
                               f'{res.plural}{"." + res.group if res.group else ""} "{name}" already exists',
                               {"name": name, "group": res.group, "kind": res.plural})
            if ns is not None and self._live((kmock.resource("v1/namespaces"), None, ns)) is None:
                raise APIError(404, "NotFound", f'namespaces "{ns}" not found',
                               {"name": ns, "kind": "namespaces"})
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink"):
                meta.pop(field, None)
            meta.update({"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(), "generation": 1})
            if ns is not None:
                meta["namespace"] = ns
            else:
                meta.pop("namespace", None)
            self._create_defaults(res, info, body)
            if request.params.get("dryRun"):
                body["metadata"]["resourceVersion"] = str(self._rv)
                return body
            if res == kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
                self._declare_crd(body)
            return await self._write(res, key, body, "ADDED", None)

    def _create_defaults(self, res: kmock.resource, info: kmock.ResourceInfo, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if res == kmock.resource("v1/pods"):
            body["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        elif res == kmock.resource("v1/namespaces"):
            body["status"] = {"phase": "Active"}
            body.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            body["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        elif res == kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
            spec = body.get("spec", {})
            body["status"] = {
                "acceptedNames": spec.get("names", {}),
                "storedVersions": [v.get("name") for v in spec.get("versions", []) if v.get("storage")],
                "conditions": [{"type": t, "status": "True", "reason": r, "lastTransitionTime": _now(),
                                "message": ""} for t, r in (("NamesAccepted", "NoConflicts"),
                                                            ("Established", "InitialNamesAccepted"))]}
        elif res == kmock.resource("v1/nodes"):
            pass  # Kubernetes keeps a node's status on create
        elif "status" in info.subresources:
            body.pop("status", None)

    def _declare_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            res = kmock.resource(spec.get("group"), version.get("name"), names.get("plural"))
            self.resources[res] = kmock.ResourceInfo(
                kind=names.get("kind"), singular=names.get("singular") or names.get("kind", "").lower(),
                namespaced=spec.get("scope") == "Namespaced", verbs=set(VERBS),
                shortnames=set(names.get("shortNames") or []),
                categories=set(names.get("categories") or []),
                subresources={"status"} if "status" in (version.get("subresources") or {}) else set())
            self._printer_columns[res] = version.get("additionalPrinterColumns") or []

    async def _patch(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        key = self._key(request, info)
        if ctype == "application/apply-patch+yaml":
            return await self._apply(request, res, info, key)
        async with self._lock:
            cur = self._live(key)
            if cur is None:
                raise self._not_found(res, request.name)
            if ctype == "application/merge-patch+json":
                patch = self._body(request)
                self._check_rv_precondition(patch, cur)
                new = merge_patch(cur, patch)
            elif ctype == "application/json-patch+json":
                ops = self._body(request, list)
                try:
                    new = jsonpatch.apply_patch(cur, ops, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as e:
                    raise APIError(422, "Invalid", f"the server rejected our request due to an error in our "
                                                   f"request: {e}")
            elif ctype == "application/strategic-merge-patch+json":
                if res.group not in BUILTIN_GROUPS:
                    raise APIError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                                   "format - accepted media types include: application/json-patch+json, "
                                   "application/merge-patch+json, application/apply-patch+yaml")
                patch = self._body(request)
                self._check_rv_precondition(patch, cur)
                new = strategic_merge(cur, patch)
            else:
                raise APIError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format "
                                                            f"- {ctype!r}")
            return await self._update(res, info, key, cur, new, request.subresource)

    async def _apply(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo,
                     key: Any) -> dict[str, Any]:
        manager = request.params.get("fieldManager")
        if not manager:
            raise APIError(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required "
                                           "value: is required for apply patch")
        cfg = self._body(request)
        async with self._lock:
            cur = self._live(key)
        if cur is None:
            if request.subresource is not None:
                raise self._not_found(res, request.name)
            created = await self._create(request, res, info, body=copy.deepcopy(cfg), name=request.name)
            self._applied[(key, None, manager)] = cfg
            return created
        async with self._lock:
            cur = self._live(key)
            if cur is None:
                raise self._not_found(res, request.name)
            self._check_type(dict(cfg), res, info)
            self._check_rv_precondition(cfg, cur)
            previous = self._applied.get((key, request.subresource, manager))
            base = _remove_dropped(copy.deepcopy(cur), previous, cfg) if previous else copy.deepcopy(cur)
            new = merge_patch(base, cfg)
            result = await self._update(res, info, key, cur, new, request.subresource)
            self._applied[(key, request.subresource, manager)] = cfg
            return result

    @staticmethod
    def _check_rv_precondition(body: dict[str, Any], cur: dict[str, Any]) -> None:
        want = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body.get("metadata"), dict) else None
        if want is not None and str(want) != cur["metadata"].get("resourceVersion"):
            raise APIError(409, "Conflict", f'Operation cannot be fulfilled on {cur.get("kind", "object")} '
                                            f'"{cur["metadata"]["name"]}": the object has been modified; please '
                                            f'apply your changes to the latest version and try again')

    async def _replace(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        body = self._body(request)
        key = self._key(request, info)
        meta = body.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != request.name:
            raise APIError(400, "BadRequest", "the name of the object does not match the name on the URL")
        async with self._lock:
            cur = self._live(key)
        if cur is None:
            if (res.group, res.plural) in CREATE_ON_UPDATE and request.subresource is None:
                return await self._create(request, res, info, body=body, name=request.name)
            raise self._not_found(res, request.name)
        async with self._lock:
            cur = self._live(key)
            if cur is None:
                raise self._not_found(res, request.name)
            if meta.get("resourceVersion") is None:
                if res.group not in BUILTIN_GROUPS:
                    raise APIError(422, "Invalid", f'{info.kind} "{request.name}" is invalid: '
                                                   'metadata.resourceVersion: Invalid value: 0x0: must be '
                                                   'specified for an update')
            else:
                self._check_rv_precondition(body, cur)
            self._check_type(body, res, info)
            return await self._update(res, info, key, cur, body, request.subresource)

    async def _update(self, res: kmock.resource, info: kmock.ResourceInfo, key: Any, cur: dict[str, Any],
                      new: dict[str, Any], subresource: str | None) -> dict[str, Any]:
        """Common tail of PATCH/PUT/apply (lock held): restrict, stamp, store, emit."""
        has_status = "status" in info.subresources
        if not isinstance(new, dict):
            raise APIError(422, "Invalid", "the patched object is not a JSON object")
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(cur)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif has_status:
            if "status" in cur:
                new["status"] = copy.deepcopy(cur["status"])
            else:
                new.pop("status", None)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise APIError(422, "Invalid", "metadata must be an object")
        cur_meta = cur["metadata"]
        if meta.get("name", cur_meta["name"]) != cur_meta["name"]:
            raise APIError(400, "BadRequest", "the name of the object does not match the name on the URL")
        if meta.get("namespace", cur_meta.get("namespace")) != cur_meta.get("namespace"):
            raise APIError(400, "BadRequest", "the namespace of the object does not match the namespace on the URL")
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation", "resourceVersion"):
            if field in cur_meta:
                meta[field] = cur_meta[field]
            else:
                meta.pop(field, None)
        new["apiVersion"], new["kind"] = cur.get("apiVersion"), cur.get("kind")
        if cur_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(cur_meta.get("finalizers") or [])
            if added:
                raise APIError(422, "Invalid", f'{info.kind} "{cur_meta["name"]}" is invalid: '
                                               f'metadata.finalizers: Forbidden: no new finalizers can be added '
                                               f'if the object is being deleted, found new finalizers '
                                               f'{sorted(added)}')
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if new == cur:
            return cur  # no-op: no new resourceVersion, no event
        if _spec_part(new, has_status) != _spec_part(cur, has_status):
            meta["generation"] = int(cur_meta.get("generation", 1)) + 1
        if res == kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"):
            self._declare_crd(new)
        written = await self._write(res, key, new, "MODIFIED", cur)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return await self._remove(res, key, written)
        return written

    async def _delete(self, request: kmock.Request, res: kmock.resource, info: kmock.ResourceInfo) -> dict[str, Any]:
        if request.subresource is not None:
            raise APIError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        key = self._key(request, info)
        opts = request.data if isinstance(request.data, dict) else {}
        async with self._lock:
            cur = self._live(key)
            if cur is None:
                raise self._not_found(res, request.name)
            pre = opts.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != cur["metadata"].get("uid"):
                raise APIError(409, "Conflict", f'Precondition failed: UID in precondition: {pre["uid"]}, '
                                                f'UID in object meta: {cur["metadata"].get("uid")}')
            if pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"].get("resourceVersion"):
                raise APIError(409, "Conflict", "Precondition failed: resourceVersion mismatch")
            if request.params.get("dryRun") or opts.get("dryRun"):
                return cur
            orphan = (opts.get("propagationPolicy") or request.params.get("propagationPolicy")) == "Orphan" \
                or opts.get("orphanDependents") is True
            return await self._delete_object(res, key, cur, orphan=orphan)

    async def _delete_collection(self, request: kmock.Request, res: kmock.resource,
                                 info: kmock.ResourceInfo) -> dict[str, Any]:
        match = self._matcher(request, res)
        deleted = []
        async with self._lock:
            for key, obj in list(self._live_items(res)):
                if match(obj):
                    deleted.append(await self._delete_object(res, key, copy.deepcopy(obj)))
            rv = self._rv
        return {"apiVersion": _api_version(res), "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(rv)}, "items": deleted}


# ---------------------------------------------------------------------------
# running it
# ---------------------------------------------------------------------------
def write_kubeconfig(url: str, path: str | os.PathLike[str], namespace: str = "default") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator",
                                                        "namespace": namespace}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class EmulatorThread:
    """Run an APIServer on 127.0.0.1 in a background thread with its own loop."""

    def __init__(self, port: int = 0, kubeconfig: str | os.PathLike[str] | None = None,
                 bookmark_interval: float = 30.0):
        self._port = port
        self._kubeconfig_path = kubeconfig
        self._bookmark_interval = bookmark_interval
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.emulator: APIServer | None = None
        self.url = ""
        self.kubeconfig: Path | None = None

    def start(self) -> EmulatorThread:
        self._thread = threading.Thread(target=self._run, name="k8s-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the API emulator did not start in 30 s")
        if self._error is not None:
            raise RuntimeError(f"the API emulator failed: {self._error!r}")
        if self._kubeconfig_path is not None:
            self.kubeconfig = write_kubeconfig(self.url, self._kubeconfig_path)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported through start()
            self._error = e
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = APIServer(bookmark_interval=self._bookmark_interval)
        async with self.emulator:
            async with kmock.Server(self.emulator, host="127.0.0.1", port=self._port or None) as server:
                self.url = f"http://127.0.0.1:{server.port}"
                self._ready.set()
                await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class KubeClient:
    """Small synchronous client for test set-up (plain HTTP calls, no magic)."""

    MERGE = "application/merge-patch+json"
    JSON_PATCH = "application/json-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    @staticmethod
    def path(resource: str, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        res = kmock.resource(resource)
        base = f"/api/{res.version}" if res.group == "" else f"/apis/{res.group}/{res.version}"
        if namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{res.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base

    def _call(self, method: str, path: str, ok: Iterable[int] = (200, 201), **kw: Any) -> Any:
        r = self.session.request(method, self.url + path, timeout=self.timeout, **kw)
        if r.status_code not in ok:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json() if r.content else None

    def create(self, resource: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        namespace = namespace or (body.get("metadata") or {}).get("namespace")
        return self._call("POST", self.path(resource, namespace), json=body)

    def get(self, resource: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        r = self.session.get(self.url + self.path(resource, namespace, name), timeout=self.timeout)
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()

    def list(self, resource: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector)) if v}
        return self._call("GET", self.path(resource, namespace), params=params)["items"]

    def patch(self, resource: str, name: str, patch: Any, namespace: str | None = None,
              subresource: str | None = None, content_type: str = MERGE) -> dict[str, Any]:
        return self._call("PATCH", self.path(resource, namespace, name, subresource),
                          data=json.dumps(patch), headers={"Content-Type": content_type})

    def replace(self, resource: str, body: dict[str, Any], namespace: str | None = None,
                subresource: str | None = None) -> dict[str, Any]:
        meta = body["metadata"]
        return self._call("PUT", self.path(resource, namespace or meta.get("namespace"), meta["name"], subresource),
                          json=body)

    def delete(self, resource: str, name: str, namespace: str | None = None, missing_ok: bool = True) -> Any:
        return self._call("DELETE", self.path(resource, namespace, name),
                          ok=(200, 202, 404) if missing_ok else (200, 202),
                          json={"propagationPolicy": "Background"})

    # -- convenience for the checks ---------------------------------------------------
    def ensure_namespace(self, name: str) -> dict[str, Any]:
        return self.get("v1/namespaces", name) or self.create("v1/namespaces", {"metadata": {"name": name}})

    def create_node(self, name: str, address: str = "127.0.0.1") -> dict[str, Any]:
        return self.create("v1/nodes", {
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "spec": {},
            "status": {"addresses": [{"type": "InternalIP", "address": address},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})

    def create_pod(self, name: str, namespace: str, labels: dict[str, str], node: str,
                   container: str = "app", image: str = "python:3") -> dict[str, Any]:
        """Create the Pod object as a controller would; the API assigns its uid."""
        return self.create("v1/pods", {
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": container, "image": image}]}}, namespace)

    def mark_pod_running(self, name: str, namespace: str, container_id: str, ip: str, host_ip: str = "127.0.0.1",
                         container: str = "app", image: str = "python:3") -> dict[str, Any]:
        """Write the pod status as a kubelet would (through the status subresource)."""
        now = _now()
        return self.patch("v1/pods", name, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip, "startTime": now,
            "qosClass": "BestEffort",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                           for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
            "containerStatuses": [{"name": container, "image": image, "imageID": f"docker.io/library/{image}",
                                   "containerID": f"containerd://{container_id}", "ready": True, "started": True,
                                   "restartCount": 0, "state": {"running": {"startedAt": now}}}]}},
            namespace, subresource="status")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Kubernetes API emulator (kmock-based) on 127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--kubeconfig", help="write a kubeconfig pointing at the emulator here")
    ap.add_argument("--bookmark-interval", type=float, default=30.0)
    args = ap.parse_args(argv)
    api = EmulatorThread(port=args.port, kubeconfig=args.kubeconfig,
                         bookmark_interval=args.bookmark_interval).start()
    print(api.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
