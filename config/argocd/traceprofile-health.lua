-- Argo CD health of a podspan.dev TraceProfile or ClusterTraceProfile, from the Ready and Degraded
-- conditions the operator writes (reasons: docs/operator.md). Tested by tests/operator/test_argocd_health.py.
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the podspan operator to report"
  return hs
end
if obj.metadata.generation ~= nil and status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the podspan operator to observe generation " .. obj.metadata.generation
  return hs
end
local ready, degraded
for _, condition in ipairs(status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Degraded" then
    degraded = condition
  end
end
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
-- Problems a sync or the cluster must fix. EventsLost, OverBudget and TLSNotReadable are not among them: the
-- profile traces, some spans are missing (OverBudget: by design, RED metrics still count all), and the message says so.
local failing = {InvalidSpec = true, NodesNotReporting = true, ProbeErrors = true, ExportFailing = true}
if degraded ~= nil and degraded.status == "True" and failing[degraded.reason] then
  hs.status = "Degraded"
  hs.message = degraded.reason .. ": " .. (degraded.message or "")
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  if degraded ~= nil and degraded.status == "True" then
    hs.message = hs.message .. "; " .. degraded.reason .. ": " .. (degraded.message or "")
  end
  return hs
end
if ready.reason == "NoMatchingPods" then
  -- Nothing to trace is the desired state until matching pods start.
  hs.status = "Healthy"
elseif failing[ready.reason] then
  hs.status = "Degraded"
else
  hs.status = "Progressing"  -- Applying, or a reason this script does not know yet
end
hs.message = ready.reason .. ": " .. (ready.message or "")
return hs
